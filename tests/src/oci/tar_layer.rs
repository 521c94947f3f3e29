//! A layer's tar, written and hashed in one pass: the tar's sha256 is the
//! layer's diff id; the stored (maybe gzipped) bytes' sha256 its digest.

use std::io::{self, Write};

use anyhow::Result;

use super::{
    LayerSpec,
    rng::{Rng, SeededReader},
};

/// Counts and hashes what passes through on its way to `inner`.
pub(super) struct HashingWriter<W> {
    inner: W,
    ctx: ring::digest::Context,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    pub(super) fn new(inner: W) -> Self {
        Self {
            inner,
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }

    pub(super) fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.ctx.finish()));
        (self.inner, digest, self.len)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(super) fn file_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// Writes the layer tar for `spec` into `out`; returns `out` and the
/// sha256 of the tar (the diff id).
pub(super) fn write_tar<W: Write>(out: W, spec: LayerSpec) -> Result<(W, String)> {
    let hashed = HashingWriter::new(out);
    let mut tar = tar::Builder::new(hashed);
    let mut dir = tar::Header::new_ustar();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(0);
    tar.append_data(&mut dir, "data/", io::empty())?;
    let reader = SeededReader {
        rng: Rng::new(spec.seed),
        remaining: spec.size,
    };
    tar.append_data(
        &mut file_header(spec.size),
        format!("data/layer-{}.bin", spec.seed),
        reader,
    )?;
    let hashed = tar.into_inner()?;
    let (out, diff_id, _) = hashed.finish();
    Ok((out, diff_id))
}

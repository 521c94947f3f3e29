//! Checksum lists in `sha256sum` output form (`SHA256SUMS`): one
//! `<64 hex>  <name>` (text mode) or `<64 hex> *<name>` (binary mode) per
//! line, names relative to the list's own directory. Lines that are not
//! of that form (blank lines, comments, PGP armour around a clearsigned
//! list) are skipped; a name given twice with different digests names
//! neither, since the list contradicts itself.

use std::collections::HashMap;

use crate::config::parse_sha256;

/// Parses `text` into request path → lowercase hex digest, each name
/// joined to `dir` (the list's directory, ending in `/`). Names with
/// `..` or `.` segments, backslashes (sha256sum's escaping) or a leading
/// `/` are skipped: a list names files beside or below itself.
pub fn parse(text: &str, dir: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    let mut contradicted = Vec::new();
    for line in text.lines() {
        let Some((hex, name)) = parse_line(line) else {
            continue;
        };
        let path = format!("{dir}{name}");
        match out.get(&path) {
            Some(prev) if *prev != hex => contradicted.push(path),
            _ => {
                out.insert(path, hex);
            }
        }
    }
    for path in contradicted {
        out.remove(&path);
    }
    out
}

fn parse_line(line: &str) -> Option<(String, &str)> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (hex, rest) = line.split_once(' ')?;
    let hex = parse_sha256(hex)?;
    // Text mode: a second space; binary mode: `*`.
    let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
    let plain = !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && name
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..");
    plain.then_some((hex, name))
}

/// The directory of a list at `path` (`/releases/SHA256SUMS` →
/// `/releases/`).
pub fn dir_of(path: &str) -> &str {
    path.rfind('/').map_or("/", |i| &path[..=i])
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0000000000000000000000000000000000000000000000000000000000000000";
    const B: &str = "ABCDEFabcdef0000000000000000000000000000000000000000000000000000";

    #[test]
    fn text_and_binary_lines_name_paths_beside_the_list() {
        let text = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\n\n{A}  app-1.0.tar.gz\n{B} *sub/fw.bin\r\n# comment\n{A}  ../escape\n{A}  /abs\n{A} single-space\nnot-hex  x\n"
        );
        let sums = parse(&text, dir_of("/releases/SHA256SUMS"));
        assert_eq!(sums.len(), 2, "{sums:?}");
        assert_eq!(sums["/releases/app-1.0.tar.gz"], A);
        assert_eq!(sums["/releases/sub/fw.bin"], B.to_ascii_lowercase());
    }

    #[test]
    fn a_contradicted_name_names_nothing() {
        let text = format!("{A}  x\n{B}  x\n{A}  y\n{A}  y\n");
        let sums = parse(&text, "/");
        assert_eq!(sums.get("/x"), None);
        assert_eq!(sums.get("/y").map(String::as_str), Some(A));
    }

    #[test]
    fn directories_end_in_a_slash() {
        assert_eq!(dir_of("/SHA256SUMS"), "/");
        assert_eq!(dir_of("/a/b/SUMS"), "/a/b/");
    }
}

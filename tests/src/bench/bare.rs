//! The floor under a SYN's verdict in (e): a TC program that does nothing
//! but one `bpf_sk_lookup_tcp` on the packet's own 4-tuple (and releases
//! what it found), loaded by the bench itself and test-run on the same
//! packet as the gateway's program. A SYN cannot be steered to a socket
//! for less: issue 15 item 6 measures the gateway's SYN against it.
//!
//! Beside it, an empty program (`return TC_ACT_OK`): what `BPF_PROG_TEST_RUN`
//! itself costs per run, which every figure of (e) includes.
//!
//! The programs are assembled here (24 and 2 instructions) rather than
//! built with the eBPF toolchain: the bench then needs no second object,
//! and what it runs is exactly what this file shows. The lookup assumes an
//! IPv4 header without options, which is what the bench's crafted packets
//! carry.

use std::{
    ffi::CString,
    os::fd::{FromRawFd as _, OwnedFd},
};

use anyhow::{Result, bail};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;

/// Helper numbers (`enum bpf_func_id`, include/uapi/linux/bpf.h).
const FN_SK_LOOKUP_TCP: i32 = 84;
const FN_SK_RELEASE: i32 = 86;

/// `struct __sk_buff` offsets of `data` and `data_end`.
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;
/// Ethernet (14) + IPv4 without options (20): where the addresses and
/// ports sit, and how much of the packet the program reads.
const IP_SADDR: i32 = 14 + 12;
const IP_DADDR: i32 = 14 + 16;
const L4_PORTS: i32 = 14 + 20;
const READ_END: i32 = L4_PORTS + 4;
/// `struct bpf_sock_tuple`'s IPv4 member: saddr, daddr, sport, dport.
const TUPLE_V4_LEN: i32 = 12;

/// One `struct bpf_insn`, little-endian.
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    dst: u8,
    src: u8,
    off: i16,
    imm: i32,
}

impl Insn {
    const fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        Self {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    fn encode(self) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = self.code;
        b[1] = (self.src << 4) | (self.dst & 0x0f);
        b[2..4].copy_from_slice(&self.off.to_le_bytes());
        b[4..8].copy_from_slice(&self.imm.to_le_bytes());
        b
    }
}

// Opcodes (BPF_CLASS | BPF_OP | BPF_SRC).
/// `dst = src` (ALU64 MOV X).
const fn mov(dst: u8, src: u8) -> Insn {
    Insn::new(0xbf, dst, src, 0, 0)
}
/// `dst = imm`, sign-extended to 64 bits (ALU64 MOV K).
const fn mov_imm(dst: u8, imm: i32) -> Insn {
    Insn::new(0xb7, dst, 0, 0, imm)
}
/// `dst += imm` (ALU64 ADD K).
const fn add_imm(dst: u8, imm: i32) -> Insn {
    Insn::new(0x07, dst, 0, 0, imm)
}
/// `dst = *(u32 *)(src + off)` (LDX MEM W).
const fn load32(dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(0x61, dst, src, off, 0)
}
/// `*(u32 *)(dst + off) = src` (STX MEM W).
const fn store32(dst: u8, off: i16, src: u8) -> Insn {
    Insn::new(0x63, dst, src, off, 0)
}
/// `if dst > src goto +off` (JMP JGT X, unsigned).
const fn jgt(dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(0x2d, dst, src, off, 0)
}
/// `if dst == imm goto +off` (JMP JEQ K).
const fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
    Insn::new(0x15, dst, 0, off, imm)
}
const fn call(helper: i32) -> Insn {
    Insn::new(0x85, 0, 0, 0, helper)
}
const fn exit() -> Insn {
    Insn::new(0x95, 0, 0, 0, 0)
}

/// r10 is the frame pointer; r1–r5 carry a call's arguments, r0 its result.
const FP: u8 = 10;

/// The program: bounds-check the headers, copy the packet's addresses and
/// ports (already in network order) into a tuple on the stack, look the
/// socket up in the current namespace, release it if found, pass.
fn program() -> Vec<Insn> {
    let tuple = -(TUPLE_V4_LEN as i16);
    let mut p = vec![
        mov(6, 1), // r6 = skb
        load32(2, 6, SKB_DATA),
        load32(3, 6, SKB_DATA_END),
        mov(4, 2),
        add_imm(4, READ_END),
        jgt(4, 3, 0), // to `out`, patched below
        load32(5, 2, IP_SADDR as i16),
        store32(FP, tuple, 5),
        load32(5, 2, IP_DADDR as i16),
        store32(FP, tuple + 4, 5),
        load32(5, 2, L4_PORTS as i16),
        store32(FP, tuple + 8, 5),
        mov(1, 6),
        mov(2, FP),
        add_imm(2, i32::from(tuple)),
        mov_imm(3, TUPLE_V4_LEN),
        mov_imm(4, -1), // BPF_F_CURRENT_NETNS
        mov_imm(5, 0),
        call(FN_SK_LOOKUP_TCP),
        jeq_imm(0, 0, 2),
        mov(1, 0),
        call(FN_SK_RELEASE),
    ];
    let out = p.len();
    p.push(mov_imm(0, 0)); // TC_ACT_OK
    p.push(exit());
    // The bounds check jumps to `out`, relative to the next instruction.
    p[5].off = (out - 6) as i16;
    p
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `expected_attach_type`;
/// the kernel takes a shorter attr and zero-fills the rest.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// A loaded floor program.
pub struct Floor {
    pub fd: OwnedFd,
}

impl Floor {
    /// The bare `bpf_sk_lookup_tcp` program.
    pub fn lookup() -> Result<Self> {
        Self::load(b"bare_lookup", &program())
    }

    /// The empty program: the test run's own cost.
    pub fn empty() -> Result<Self> {
        Self::load(b"bare_empty", &[mov_imm(0, 0), exit()])
    }

    /// Loads `insns` as a TC program named `name` (at most 15 bytes); a
    /// refusal carries the verifier's log.
    fn load(name: &[u8], insns: &[Insn]) -> Result<Self> {
        let code: Vec<u8> = insns.iter().copied().flat_map(Insn::encode).collect();
        let license = CString::new("GPL")?;
        let mut log = vec![0u8; 64 * 1024];
        let mut prog_name = [0u8; 16];
        let len = name.len().min(15);
        prog_name[..len].copy_from_slice(&name[..len]);
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_SCHED_CLS,
            insn_cnt: (code.len() / 8) as u32,
            insns: code.as_ptr() as u64,
            license: license.as_ptr() as u64,
            log_level: 1,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name,
            ..Default::default()
        };
        match super::kernel::sys_bpf(BPF_PROG_LOAD, &mut attr) {
            // SAFETY: the kernel just returned this fd to us.
            Ok(fd) => Ok(Self {
                fd: unsafe { OwnedFd::from_raw_fd(fd as i32) },
            }),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                bail!(
                    "loading the {} program: {e}\n{}",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(&log[..end])
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_as_the_kernel_reads_it() {
        // r6 = r1: opcode 0xbf, src 1 in the high nibble, dst 6 in the low.
        assert_eq!(mov(6, 1).encode(), [0xbf, 0x16, 0, 0, 0, 0, 0, 0]);
        // *(u32 *)(r10 - 12) = r5
        assert_eq!(
            store32(FP, -12, 5).encode(),
            [0x63, 0x5a, 0xf4, 0xff, 0, 0, 0, 0]
        );
        // r4 = -1, sign-extended by the kernel
        assert_eq!(
            mov_imm(4, -1).encode(),
            [0xb7, 0x04, 0, 0, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(call(84).encode(), [0x85, 0, 0, 0, 84, 0, 0, 0]);
    }

    #[test]
    fn the_bounds_check_lands_on_the_pass() {
        let p = program();
        let target = 5 + 1 + p[5].off as usize;
        assert_eq!(p[target].code, 0xb7, "mov r0, 0");
        assert_eq!((p[target].dst, p[target].imm), (0, 0));
        assert_eq!(p[target + 1].code, 0x95, "exit");
        // The null check skips exactly the release.
        let null = p.iter().position(|i| i.code == 0x15).expect("a null check");
        assert_eq!(null + 1 + p[null].off as usize, target);
        assert_eq!(p.len(), 24);
    }
}

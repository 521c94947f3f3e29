//! The eBPF program's stack frames against the oldest kernel's verifier
//! (6.1), checked on the object this build embeds, before any VM boots.
//!
//! 6.1 bounds the stack of a whole BPF-to-BPF call chain at 512 bytes, each
//! frame rounded up to 32 bytes and an empty frame counted as 32. The
//! program is one large function (`try_ingress` and everything inlined
//! into it) between a small entry function and small leaves (`count`,
//! `memcpy`, ...): so the large frame may take at most 448 bytes. A frame
//! is measured as the verifier sees it: the deepest `r10 - N` a load or
//! store reaches.

use object::{Object as _, ObjectSection as _, ObjectSymbol as _, SymbolKind};

/// The chain's bound and the two small frames around the large one.
const CHAIN_LIMIT: u64 = 512;
const SMALL_FRAME: u64 = 32;

/// Each function's name and frame (bytes below r10 it touches).
fn frames(elf: &[u8]) -> Vec<(String, u64)> {
    let file = object::File::parse(elf).expect("the embedded eBPF object parses as ELF");
    let mut out = Vec::new();
    for sym in file.symbols() {
        if sym.kind() != SymbolKind::Text || sym.size() == 0 {
            continue;
        }
        let Some(index) = sym.section_index() else {
            continue;
        };
        let section = file.section_by_index(index).expect("symbol's section");
        let data = section.data().expect("section data");
        let start = usize::try_from(sym.address() - section.address()).expect("offset");
        let end = start + usize::try_from(sym.size()).expect("size");
        let code = data.get(start..end).expect("symbol within its section");
        out.push((sym.name().unwrap_or("?").to_owned(), frame_of(code)));
    }
    out
}

/// The deepest stack offset the instructions in `code` load from or store to.
fn frame_of(code: &[u8]) -> u64 {
    const LD_IMM64: u8 = 0x18;
    let (mut deepest, mut pc) = (0u64, 0usize);
    while let Some(insn) = code.get(pc..pc + 8) {
        let (opcode, regs) = (insn[0], insn[1]);
        let (dst, src) = (regs & 0x0f, regs >> 4);
        let off = i16::from_le_bytes([insn[2], insn[3]]);
        let base = match opcode & 0x07 {
            0x01 => Some(src),        // LDX: dst = *(src + off)
            0x02 | 0x03 => Some(dst), // ST, STX: *(dst + off) = ...
            _ => None,
        };
        if base == Some(10) && off < 0 {
            deepest = deepest.max(u64::from(off.unsigned_abs()));
        }
        // The 64-bit immediate load takes two instruction slots.
        pc += if opcode == LD_IMM64 { 16 } else { 8 };
    }
    deepest
}

fn rounded(frame: u64) -> u64 {
    frame.max(1).div_ceil(SMALL_FRAME) * SMALL_FRAME
}

#[test]
fn the_programs_frames_fit_the_6_1_verifier() {
    if super::OBJECT.is_empty() {
        // AYA_BUILD_SKIP=1 (clippy, quick unit runs): no object to check.
        // `cargo xtask test` builds the real one for this step.
        eprintln!("skipped: built with AYA_BUILD_SKIP=1, no eBPF object embedded");
        return;
    }
    let frames = frames(super::OBJECT);
    assert!(!frames.is_empty(), "no functions found in the eBPF object");
    let large: Vec<_> = frames
        .iter()
        .filter(|(_, f)| rounded(*f) > SMALL_FRAME)
        .collect();
    let allowed = CHAIN_LIMIT - 2 * SMALL_FRAME;
    assert!(
        large.len() <= 1,
        "more than one eBPF function has a frame over {SMALL_FRAME} bytes ({large:?}): \
         this check assumes one large function between small ones; follow the calls \
         to check the chains"
    );
    for (name, frame) in large {
        assert!(
            rounded(*frame) <= allowed,
            "the eBPF function {name} uses {frame} bytes of stack ({} rounded): 6.1's \
             verifier refuses more than {allowed} between the entry function and a leaf \
             (\"combined stack size of 3 calls is ... Too large\"); move work into a \
             non-inlined function or shrink what is kept on the stack",
            rounded(*frame)
        );
    }
}

#[test]
fn frames_are_read_from_r10_loads_and_stores() {
    // r1 = *(u64 *)(r10 - 472); *(u32 *)(r10 - 8) = r2; r0 = 0 (LD_IMM64,
    // whose second slot must not be read as an instruction); exit.
    let code: Vec<u8> = [
        [0x79, 0xa1, 0x28, 0xfe, 0, 0, 0, 0],
        [0x63, 0x2a, 0xf8, 0xff, 0, 0, 0, 0],
        [0x18, 0x00, 0, 0, 0, 0, 0, 0],
        [0x00, 0x00, 0x00, 0x80, 0, 0, 0, 0],
        [0x95, 0, 0, 0, 0, 0, 0, 0],
    ]
    .concat();
    assert_eq!(frame_of(&code), 472);
    assert_eq!(frame_of(&code[8..]), 8);
    assert_eq!(rounded(0), 32);
    assert_eq!(rounded(440), 448);
    assert_eq!(rounded(472), 480);
}

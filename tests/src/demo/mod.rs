//! Parts of the `demo` binary (`cargo xtask demo`), included from
//! `src/bin/demo.rs` with `#[path]`: they are not part of the library.

pub mod image;
pub mod kernel_path;
pub mod pulls;
pub mod real_site;
pub mod steps;
pub mod trail;

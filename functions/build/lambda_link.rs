//! Build script shared by every Lambda binary and the cold-start baseline (`hello`): links them as
//! position-dependent executables (`-no-pie`) on Linux glibc targets, which is what Lambda runs
//! (`provided.al2023`, arm64 via `cargo lambda build`, and x86_64).
//!
//! Why: a PIE executable is relocated by the dynamic loader at every start. These binaries carry
//! 20-30 thousand relative relocations (vtables, string tables, the SDKs' static data), so each
//! cold start spent time in `_dl_relocate_object` and copied every page of `.data.rel.ro` it
//! patched (127 page faults of 374 in the sweeper's start, against 34 in hello). A non-PIE
//! executable has its addresses fixed at link time: no relocation pass, no copies. Measured with
//! `coldstart`: init 0.4 ms faster for api, worker and sweeper (BENCHMARKS.md, "cold start").
//!
//! The cost: the executable's own image loads at a fixed address (heap, stack, the shared
//! libraries and every mmap are still randomised). Objects are still compiled as PIC; only the
//! final link changes, so `cargo test` and the libraries are unaffected.
fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        // After rustc's own `-pie`, so it wins (gcc and zig cc take the last of the two).
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}

//! Builds the eBPF programs (nightly, bpf target) with aya-build and leaves the object in
//! `OUT_DIR/gateway-ebpf`, where `include_bytes_aligned!` embeds it into the binary.
//!
//! `cargo check`/`clippy` never need the eBPF linker: with `GATEWAY_EBPF_STUB=1`, or when
//! `bpf-linker` is not installed, an empty stub object is written instead and the binary refuses
//! to start its data plane with a message naming `cargo xtask build`.

use std::{env, fs, path::PathBuf};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=GATEWAY_EBPF_STUB");
    println!("cargo:rerun-if-env-changed=GATEWAY_REQUIRE_EBPF");
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").ok_or_else(|| anyhow::anyhow!("OUT_DIR"))?);
    let manifest =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or_else(|| anyhow::anyhow!("CARGO_MANIFEST_DIR"))?);
    let ebpf_dir = manifest.join("../gateway-ebpf");
    let common_dir = manifest.join("../gateway-common/src");
    println!("cargo:rerun-if-changed={}", common_dir.display());

    let stub_wanted = env::var("GATEWAY_EBPF_STUB").is_ok_and(|v| v == "1");
    if stub_wanted || !on_path("bpf-linker") {
        if env::var("GATEWAY_REQUIRE_EBPF").is_ok_and(|v| v == "1") {
            anyhow::bail!(
                "eBPF programs required (GATEWAY_REQUIRE_EBPF=1) but {}; run `cargo xtask setup`",
                if stub_wanted { "GATEWAY_EBPF_STUB=1 is set" } else { "bpf-linker is not on PATH" }
            );
        }
        println!(
            "cargo:warning=eBPF programs not built ({}); the data plane is disabled in this binary. Use `cargo xtask build`.",
            if stub_wanted { "GATEWAY_EBPF_STUB=1" } else { "bpf-linker not found" }
        );
        fs::write(out_dir.join("gateway-ebpf"), [])?;
        return Ok(());
    }
    let root_dir = ebpf_dir.to_str().ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package { name: "gateway-ebpf", root_dir, ..Default::default() }],
        aya_build::Toolchain::default(),
    )
}

fn on_path(bin: &str) -> bool {
    env::var_os("PATH").map(|p| env::split_paths(&p).any(|d| d.join(bin).is_file())).unwrap_or(false)
}

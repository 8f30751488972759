//! With the `tch` feature, records the libtorch the binaries were built against as their
//! run-time search path (RUNPATH), so that `probe` starts without `LD_LIBRARY_PATH`.
//!
//! The folder is the one torch-sys links against: `$LIBTORCH_LIB/lib`, else `$LIBTORCH/lib`
//! (scripts/test sets `LIBTORCH` to the Python environment's `site-packages/torch`). Without
//! either variable (torch-sys then finds libtorch itself) nothing is added, and the loader's
//! usual search (`LD_LIBRARY_PATH`, the system folders) applies as before.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    if env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    // ELF and Mach-O linkers take `-rpath`; Windows has no run-time search path to set.
    if env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("windows") {
        return;
    }
    let Some(root) = env::var_os("LIBTORCH_LIB").or_else(|| env::var_os("LIBTORCH")) else {
        println!("cargo:warning=feature tch: LIBTORCH is not set, so no rpath to libtorch is recorded");
        return;
    };
    let lib = PathBuf::from(root).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}

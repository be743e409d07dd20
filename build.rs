//! Build script: only for the `tch` feature (the libtorch fast path, `src/fast`).
//!
//! Without a RUNPATH the binary does not find libtorch without `LD_LIBRARY_PATH`, and with the
//! linker's default `--as-needed` it is not linked to `libtorch_cuda.so` at all, so
//! `tch::Cuda::is_available()` is false even on a GPU machine (tch-rs issues #907/#980). torch-sys
//! (`links = "tch"`) exports the folder of the libtorch libraries it linked as
//! `DEP_TCH_LIBTORCH_LIB`; we add it as an rpath and force-link `libtorch` (which pulls
//! `libtorch_cuda` when present). Without the feature this script does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    match std::env::var("DEP_TCH_LIBTORCH_LIB") {
        Ok(lib) if !lib.is_empty() => println!("cargo:rustc-link-arg=-Wl,-rpath={lib}"),
        _ => println!("cargo:warning=DEP_TCH_LIBTORCH_LIB is not set by torch-sys: the binary needs LD_LIBRARY_PATH to find libtorch"),
    }
    println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
    println!("cargo:rustc-link-arg=-ltorch");
}

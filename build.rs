//! Build script: compiles the JPEG decoding shim (always) and, for the `tch` feature (the
//! libtorch fast path, `src/fast`), links libtorch.
//!
//! `src/data/image/jpeg_shim.c` drives the libjpeg that `mozjpeg-sys` builds from source; that
//! crate (`links = "jpeg"`) exports its header folders as `DEP_JPEG_INCLUDE`.
//!
//! Without a RUNPATH the binary does not find libtorch without `LD_LIBRARY_PATH`, and with the
//! linker's default `--as-needed` it is not linked to `libtorch_cuda.so` at all, so
//! `tch::Cuda::is_available()` is false even on a GPU machine (tch-rs issues #907/#980). torch-sys
//! (`links = "tch"`) exports the folder of the libtorch libraries it linked as
//! `DEP_TCH_LIBTORCH_LIB`; we add it as an rpath and force-link `libtorch` (which pulls
//! `libtorch_cuda` when present). Without the feature this part does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    jpeg_shim();
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

fn jpeg_shim() {
    const SHIM: &str = "src/data/image/jpeg_shim.c";
    println!("cargo:rerun-if-changed={SHIM}");
    let Some(include) = std::env::var_os("DEP_JPEG_INCLUDE") else {
        panic!("DEP_JPEG_INCLUDE is not set: the mozjpeg-sys dependency should export its headers");
    };
    let mut build = cc::Build::new();
    for dir in std::env::split_paths(&include) {
        build.include(dir);
    }
    build.file(SHIM).warnings(true).compile("beit_jpeg_shim");
}

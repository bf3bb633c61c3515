//! Generates the libmunge bindings from the installed `munge.h` (Debian: `libmunge-dev`) and
//! links `libmunge`.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=MUNGE_INCLUDE_DIR");
    println!("cargo:rerun-if-env-changed=MUNGE_LIB_DIR");
    let include = std::env::var_os("MUNGE_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let header = include.join("munge.h");
    if !header.is_file() {
        // A clear message instead of a clang error deep in bindgen.
        eprintln!(
            "error: {} not found: sgpu-munge builds against the installed MUNGE library. \
             Install it (Debian/Ubuntu: apt-get install libmunge-dev; RHEL: munge-devel) or \
             set MUNGE_INCLUDE_DIR to the directory holding munge.h.",
            header.display()
        );
        std::process::exit(1);
    }
    println!("cargo:rerun-if-changed={}", header.display());
    if let Some(dir) = std::env::var_os("MUNGE_LIB_DIR") {
        println!(
            "cargo:rustc-link-search=native={}",
            PathBuf::from(dir).display()
        );
    }
    println!("cargo:rustc-link-lib=munge");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let bindings = bindgen::Builder::default()
        .header(header.display().to_string())
        .allowlist_function("munge_.*")
        .allowlist_type("munge_.*")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .layout_tests(false)
        .wrap_unsafe_ops(true)
        .generate();
    match bindings {
        Ok(b) => {
            if let Err(e) = b.write_to_file(out.join("munge_bindings.rs")) {
                eprintln!("error: cannot write the MUNGE bindings: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!(
                "error: bindgen failed on {} ({e}); is libclang installed (Debian: libclang-dev)?",
                header.display()
            );
            std::process::exit(1);
        }
    }
}

//! Generates the SPANK bindings from the installed `slurm/spank.h` and `slurm/slurm_version.h`
//! (Debian: `libslurm-dev`), so `plugin_version` is the `SLURM_VERSION_NUMBER` of the Slurm
//! the plugin is built for, and the SPANK types are the installed ones.

use std::path::PathBuf;

fn main() {
    static_unwinder();
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=SLURM_INCLUDE_DIR");
    let include = std::env::var_os("SLURM_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    for h in ["slurm/spank.h", "slurm/slurm_version.h", "slurm/slurm.h"] {
        let path = include.join(h);
        if !path.is_file() {
            // A clear message instead of a clang error deep in bindgen.
            eprintln!(
                "error: {} not found: sgpu-spank builds against the installed Slurm headers. \
                 Install them (Debian/Ubuntu: apt-get install libslurm-dev; RHEL: slurm-devel) \
                 or set SLURM_INCLUDE_DIR to the directory holding slurm/spank.h.",
                path.display()
            );
            std::process::exit(1);
        }
        println!("cargo:rerun-if-changed={}", path.display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_arg(format!("-I{}", include.display()))
        // SPANK functions are resolved at run time in the host process (slurmstepd, srun,
        // sbatch export them from libslurmfull), never linked: see src/ffi.rs.
        .dynamic_library_name("SpankApi")
        .dynamic_link_require_all(true)
        .allowlist_function("spank_get_item")
        .allowlist_function("spank_getenv")
        .allowlist_function("spank_context")
        .allowlist_function("spank_option_register")
        .allowlist_function("spank_job_control_setenv")
        .allowlist_function("spank_strerror")
        .allowlist_function("slurm_error")
        .allowlist_function("slurm_info")
        .allowlist_function("slurm_spank_log")
        .allowlist_type("spank_t")
        .allowlist_type("spank_option")
        .allowlist_type("spank_item")
        .allowlist_type("spank_context")
        .allowlist_var("SLURM_VERSION_NUMBER")
        .allowlist_var("SLURM_BATCH_SCRIPT")
        .allowlist_var("SLURM_EXTERN_CONT")
        .allowlist_var("SLURM_INTERACTIVE_STEP")
        .allowlist_var("SLURM_PENDING_STEP")
        .allowlist_var("ESPANK_.*")
        .allowlist_var("SLURM_SUCCESS")
        .rustified_enum("spank_context")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .layout_tests(false)
        .wrap_unsafe_ops(true)
        .generate();
    match bindings {
        Ok(b) => {
            if let Err(e) = b.write_to_file(out.join("spank_bindings.rs")) {
                eprintln!("error: cannot write the SPANK bindings: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!(
                "error: bindgen failed on the Slurm headers in {} ({e}); is libclang installed \
                 (Debian: libclang-dev)?",
                include.display()
            );
            std::process::exit(1);
        }
    }
}

/// Links GCC's unwinder (`libgcc_eh.a`) into the plugin instead of needing `libgcc_s.so.1`.
/// Neither srun nor slurmstepd load libgcc_s, so every `dlopen` of the plugin (one in srun and
/// one in slurmstepd per step) loaded it too: about 0.1 ms of the plugin's 0.2 ms `dlopen`
/// (bench/README.md, spank-launch). The unwinder is only used inside the plugin (panics are
/// caught at every C entry point and thread start), and the cdylib exports none of its
/// symbols. Where no `libgcc_eh.a` is found (another C toolchain), libgcc_s stays.
fn static_unwinder() {
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo::rustc-check-cfg=cfg(static_unwinder)");
    let target = |k: &str| std::env::var(k).unwrap_or_default();
    if target("CARGO_CFG_TARGET_OS") != "linux" || target("CARGO_CFG_TARGET_ENV") != "gnu" {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let found = std::process::Command::new(&cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_absolute() && p.is_file());
    match found.as_deref().and_then(|p| p.parent()) {
        Some(dir) => {
            println!("cargo:rustc-link-search=native={}", dir.display());
            println!("cargo:rustc-link-lib=static:+whole-archive=gcc_eh");
            println!("cargo:rustc-cfg=static_unwinder");
        }
        None => println!(
            "cargo:warning={cc} -print-file-name=libgcc_eh.a found no libgcc_eh.a: \
             spank_sgpu.so needs libgcc_s.so.1 (a slightly slower load)"
        ),
    }
}

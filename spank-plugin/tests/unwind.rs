//! The plugin carries GCC's unwinder itself (build.rs links `libgcc_eh.a`): the built
//! `spank_sgpu.so` needs no `libgcc_s.so.1`, and panics still unwind and are caught.

#[test]
fn a_panic_unwinds_and_is_caught() {
    let caught = std::panic::catch_unwind(|| {
        let v: Vec<u32> = Vec::new();
        // an index out of bounds, as a bug in the plugin would be
        v[std::hint::black_box(3)]
    });
    assert!(caught.is_err());
}

/// The `libspank_sgpu.so` Cargo built for this test run, beside this test in
/// `target/<profile>/deps/` (the copy in `target/<profile>/` may be older).
#[cfg(static_unwinder)]
fn built_plugin() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let deps = exe
        .parent()
        .unwrap_or_else(|| panic!("{} has no parent", exe.display()));
    deps.join("libspank_sgpu.so")
}

#[cfg(static_unwinder)]
#[test]
fn the_plugin_does_not_need_libgcc_s() {
    let so = built_plugin();
    let bytes = std::fs::read(&so).unwrap_or_else(|e| panic!("{}: {e}", so.display()));
    assert!(
        bytes.starts_with(b"\x7fELF"),
        "{} is not an ELF file",
        so.display()
    );
    // a DT_NEEDED entry names the library in .dynstr
    assert!(
        !bytes.windows(13).any(|w| w == b"libgcc_s.so.1"),
        "{} still names libgcc_s.so.1",
        so.display()
    );
}

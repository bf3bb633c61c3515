//! Gives the cdylib the soname of NVIDIA's library, so that once copied to
//! `libnvidia-ml.so.1` it is indistinguishable, to the dynamic loader, from the real one.

fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnvidia-ml.so.1");
    // Never unload on dlclose: nvml-wrapper dlcloses on every `Nvml` drop, and the
    // simulator's process-wide memory (which XIDs this process has already seen) must
    // survive an init/shutdown/init cycle, as the real driver's would.
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,nodelete");
    println!("cargo:rerun-if-changed=build.rs");
}

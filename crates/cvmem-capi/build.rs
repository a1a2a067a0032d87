//! The shared library's SONAME: `libcvmem_capi.so.<major>`, so that a C VMM links against an
//! ABI version, not a file name.
fn main() {
    let major = env!("CARGO_PKG_VERSION_MAJOR");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcvmem_capi.so.{major}");
    }
}

//! Builds the gateway again when anything under `web/` changes — a file
//! added or removed included — in builds that embed the folder
//! (`src/web.rs`; the embedding macro only notices changes to the files it
//! saw last time). Builds with debug assertions read the folder at run time
//! instead, so editing a page there rebuilds nothing.

fn main() {
    if std::env::var_os("CARGO_CFG_DEBUG_ASSERTIONS").is_some() {
        println!("cargo:rerun-if-changed=build.rs");
    } else {
        println!("cargo:rerun-if-changed=../web");
    }
}

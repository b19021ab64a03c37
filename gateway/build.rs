//! Builds the gateway again when anything under `web/` changes — a file
//! added or removed included: the release build embeds the folder
//! (`src/web.rs`), and the embedding macro only notices changes to the files
//! it saw last time.

fn main() {
    println!("cargo:rerun-if-changed=../web");
}

//! `light pack`.

use std::path::PathBuf;

use crate::catalog::{Catalog, pack};

/// Arguments of `light pack`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Library directory to index (the catalog is kept in DIR/.light/).
    dir: PathBuf,
    /// List the library's contents after packing.
    #[arg(long)]
    list: bool,
}

/// Runs `light pack`.
pub fn run(a: Args) -> anyhow::Result<()> {
    let r = pack(&a.dir)?;
    println!(
        "{}: {} added, {} changed, {} unchanged, {} removed; {} files ({} bytes) hashed",
        a.dir.display(),
        r.added,
        r.changed,
        r.unchanged,
        r.removed,
        r.files_hashed,
        r.bytes_hashed
    );
    if a.list {
        for c in Catalog::open(&a.dir)?
            .contents()?
            .into_iter()
            .filter(|c| !c.removed)
        {
            println!(
                "{:>6}  v{:<3} {:>14}  {}  {}",
                c.id,
                c.version,
                c.size,
                c.root.to_hex(),
                c.path
            );
        }
    }
    Ok(())
}

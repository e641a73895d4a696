//! The `light` command.

fn main() -> anyhow::Result<()> {
    light::cli::main()
}

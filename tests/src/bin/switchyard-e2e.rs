//! The `switchyard` command line, built inside the test package so that
//! end-to-end tests can run `serve` as its own process (and kill it).

fn main() -> anyhow::Result<()> {
    switchyard::cli::main()
}

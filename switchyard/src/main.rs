//! The `switchyard` binary: `serve`, `demo` and `ctl` (see `cli`).

fn main() -> anyhow::Result<()> {
    switchyard::cli::main()
}

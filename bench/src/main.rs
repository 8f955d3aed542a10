fn main() -> anyhow::Result<()> {
    gearfleet_bench::cli::main()
}

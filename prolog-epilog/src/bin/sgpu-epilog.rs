//! `sgpu-epilog`: Slurm's `Epilog=` program; see the crate documentation.

fn main() {
    std::process::exit(sgpu_prolog_epilog::main_for(
        sgpu_prolog_epilog::Gate::Epilog,
    ));
}

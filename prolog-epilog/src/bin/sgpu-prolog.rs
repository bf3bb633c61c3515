//! `sgpu-prolog`: Slurm's `Prolog=` program; see the crate documentation.

fn main() {
    std::process::exit(sgpu_prolog_epilog::main_for(
        sgpu_prolog_epilog::Gate::Prolog,
    ));
}

//! Entry point of the `sgpu` command.

fn main() {
    eprintln!("sgpu: no subcommands are implemented yet");
    std::process::exit(2);
}

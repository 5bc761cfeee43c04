//! The `unseen` binary: the node daemon (`unseen serve`) and the modeller's CLI.

fn main() -> std::process::ExitCode {
    node::cli::main()
}

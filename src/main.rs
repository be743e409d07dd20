//! `beit-seg`: the command line (see `beit_seg::cli`).

fn main() -> std::process::ExitCode {
    beit_seg::cli::main()
}

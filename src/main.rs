use clap::Parser;

use tcpstate::cli::{self, Cli, exit};

fn main() {
    let cli = match Cli::try_parse_from(cli::with_default_command(std::env::args_os().collect())) {
        Ok(c) => c,
        Err(e) => {
            let status = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = e.print();
            std::process::exit(status);
        }
    };
    if let Err(f) = cli::run(cli) {
        eprintln!("tcpstate: {}", f.message);
        std::process::exit(f.status);
    }
}

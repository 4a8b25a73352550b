//! The `prewarm` binary: parse arguments, set up logging, run, and map the
//! outcome to a documented exit code (see the crate docs).

use clap::Parser;

fn main() {
    let cli = prewarm::cli::Cli::parse();
    prewarm::init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("prewarm: starting the async runtime: {e}");
            std::process::exit(prewarm::Exit::Failure as i32);
        }
    };
    let code = match runtime.block_on(prewarm::run(cli)) {
        Ok(exit) => exit,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("prewarm: {}", chain.join(": "));
            prewarm::exit_for(&e)
        }
    };
    std::process::exit(code as i32);
}

//! The `prewarm` binary: parse arguments, set up logging, run, and map the
//! outcome to a documented exit code (see the crate docs).

use clap::Parser;
use std::io::Write as _;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // mimalloc asks for transparent huge pages, and hosts that grant them
    // (RHEL's default `always`, or `madvise`) back a touched 4 KiB with
    // 2 MiB: peak RSS in the benchmark went from about 30 to 57 MiB. The
    // flag holds for every later page fault; a failure only costs memory.
    let _ = nix::sys::prctl::set_thp_disable(true);
    // mimalloc (v3) keeps freed pages for a second before it returns them
    // (its purge delay). The unpack hands 1 MiB chunks from thread to
    // thread, and that second held enough of them for a peak RSS of 78-92
    // MiB in the benchmark's set. At 50 ms: 54-55 MiB, for 5-10% more time
    // (1 ms: 44-47 MiB, 20% more; docs/benchmarks.md).
    // SAFETY: sets one of mimalloc's options, which its API allows at any
    // time; nothing else is touched.
    unsafe { libmimalloc_sys::mi_option_set(prewarm::MI_OPTION_PURGE_DELAY, 50) };
    let cli = prewarm::cli::Cli::parse();
    prewarm::init_logging(cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            // A closed stderr is no reason to panic: the exit code still says it.
            let _ = writeln!(
                std::io::stderr(),
                "prewarm: starting the async runtime: {e}"
            );
            std::process::exit(prewarm::Exit::Failure as i32);
        }
    };
    let code = match runtime.block_on(prewarm::run(cli)) {
        Ok(exit) => exit,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "prewarm: {}",
                prewarm::error_chain(e.as_ref())
            );
            prewarm::exit_for(&e)
        }
    };
    std::process::exit(code as i32);
}

//! The command line (`beit-seg`): argument parsing, progress and printing only; the work is in
//! the library. This is the edge of the data flow: nothing in the library imports it, and it is
//! the only place that uses `anyhow`.
//!
//! Exit status: 0 success; 1 a verified case failed; 2 a usage error (bad arguments); 3 a
//! runtime or input error (unreadable file, bad checkpoint, a case that could not be run).

/// `println!` that returns an error instead of panicking when standard output cannot be
/// written (a full disk, `> /dev/full`): `outln!("...")?`.
macro_rules! outln {
    () => { $crate::cli::stdout_write(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::cli::stdout_write(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that returns an error instead of panicking (see [`outln!`]).
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::stdout_write(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics: a message that cannot be written to standard error is
/// dropped (there is nowhere left to report it).
macro_rules! errln {
    ($($arg:tt)*) => { $crate::cli::stderr_write(format_args!("{}\n", format_args!($($arg)*))) };
}

pub mod bench;
pub mod checkpoint;
pub mod eval;
pub mod progress;
pub mod verify;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Numerical reference and conformance suite for MMSegmentation's BEiT + UPerNet.
#[derive(Parser)]
#[command(name = "beit-seg", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Verify(verify::VerifyArgs),
    /// Evaluate a checkpoint on an ADE20K-layout dataset (mIoU as MMSegmentation computes it);
    /// resumable and shardable.
    ///
    /// Example: beit-seg eval --preset beit-base-640 --checkpoint upernet_beit-base.pth
    ///   --data-root data/ADEChallengeData2016 --out results/beit-b
    Eval(eval::EvalArgs),
    /// Segment images: a label PNG, a colour mask and an overlay per image.
    ///
    /// Example: beit-seg predict img.jpg --preset beit-base-640 --checkpoint ckpt.pth --out out/
    Predict(eval::PredictArgs),
    /// Combine the results files of `eval --shard K/N` runs into the totals of one run.
    ///
    /// Example: beit-seg merge out/results.shard-*-of-4.jsonl --out metrics.json
    Merge(eval::MergeArgs),
    Inspect(checkpoint::InspectArgs),
    Convert(checkpoint::ConvertArgs),
    /// Time a backend on BEiT-B/L + UPerNet at 640 with random weights (see docs/performance.md).
    Bench(bench::BenchArgs),
}

/// The `blas` build: OpenBLAS picks its kernels when it is loaded, from `OPENBLAS_CORETYPE` or
/// its own CPU detection, which on some CPUs falls back to SSE3 kernels. When it did, and the
/// user did not choose, run this program again with the right `OPENBLAS_CORETYPE` (said once on
/// stderr); the program is replaced, so nothing has run yet.
#[cfg(feature = "blas")]
fn reexec_for_openblas() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("OPENBLAS_CORETYPE").is_some() {
        return;
    }
    let Some(better) = crate::reference::ops::openblas_better_core() else { return };
    let Ok(exe) = std::env::current_exe() else { return };
    errln!(
        "note: OpenBLAS chose its {} kernels for this CPU; running again with OPENBLAS_CORETYPE={better} \
         (set OPENBLAS_CORETYPE yourself to choose)",
        crate::reference::ops::openblas_core()
    );
    let err = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("OPENBLAS_CORETYPE", better).exec();
    errln!("note: could not run again ({err}); going on with OpenBLAS's choice");
}

/// Standard output could not be written (see [`outln!`]); a closed pipe ends the program
/// quietly, anything else (`No space left on device`) is an error.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output: {0}")]
pub struct StdoutError(pub std::io::Error);

/// Writes to the locked standard output (the body of [`outln!`] / [`out!`]).
pub fn stdout_write(args: std::fmt::Arguments<'_>) -> Result<(), StdoutError> {
    let mut o = std::io::stdout().lock();
    o.write_fmt(args).map_err(StdoutError)
}

/// Writes to standard error, ignoring failure (the body of [`errln!`]).
pub fn stderr_write(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// SIGINT, SIGTERM and SIGHUP are blocked in every thread and taken by one thread that removes
/// the temporary files of atomic writes in progress ([`crate::files::remove_temp_files`]) and
/// exits with status 128 + the signal (130 for Ctrl-C). Must run before any other thread
/// starts (threads inherit the blocked mask; child processes get an empty one from `std`).
#[cfg(unix)]
fn install_signal_cleanup() {
    // SAFETY: plain libc signal-set calls on a local set, before any other thread exists.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return;
        }
        set
    };
    let spawned = std::thread::Builder::new().name("signals".into()).spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid signal set; sigwait writes the signal number to `sig`.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            crate::files::remove_temp_files();
            std::process::exit(128 + sig);
        }
    });
    if spawned.is_err() {
        // No handler thread: unblock, so the signals keep their default effect.
        // SAFETY: as above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        }
    }
}

/// Runs the command line; `main` of the binary.
pub fn main() -> ExitCode {
    // A closed stdout (`beit-seg inspect F | head -2`) ends the program quietly, as CLIs do.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    #[cfg(unix)]
    install_signal_cleanup();
    #[cfg(feature = "blas")]
    reexec_for_openblas();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    #[cfg(feature = "tch")]
    if cli.command.uses_libtorch() && std::env::var_os("BEIT_SEG_GLIBC_MALLOC_DEFAULTS").is_none() {
        // Before any thread starts (see the function's doc); opt out with the variable above.
        crate::fast::malloc::keep_freed_memory_for_reuse();
    }
    let res = match cli.command {
        Command::Verify(a) => verify::run(a),
        Command::Eval(a) => eval::run_eval(a),
        Command::Predict(a) => eval::run_predict(a),
        Command::Merge(a) => eval::run_merge(a),
        Command::Inspect(a) => checkpoint::inspect(a),
        Command::Convert(a) => checkpoint::convert(a),
        Command::Bench(a) => bench::run_bench_cli(a),
    };
    let res = res.and_then(|code| std::io::stdout().lock().flush().map(|_| code).map_err(|e| StdoutError(e).into()));
    match res {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<StdoutError>().is_some_and(|s| s.0.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::from(141)
        }
        Err(e) => {
            errln!("error: {e:#}");
            ExitCode::from(3)
        }
    }
}

impl Command {
    /// Whether this command runs libtorch (the `tch` backend) in this process.
    #[cfg(feature = "tch")]
    fn uses_libtorch(&self) -> bool {
        use crate::backend::BackendKind::Tch;
        match self {
            Command::Verify(a) => a.backend.backend == Tch,
            Command::Eval(a) => a.model.backend.backend == Tch,
            Command::Predict(a) => a.model.backend.backend == Tch,
            Command::Bench(a) => a.backend == Tch,
            Command::Merge(_) | Command::Inspect(_) | Command::Convert(_) => false,
        }
    }
}

/// Which backend runs the model (shared by `verify`, `eval` and `predict`).
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// The implementation that runs the network: `ref` (the ndarray reference) or `tch`
    /// (libtorch; build with `--features tch`).
    #[arg(long, value_enum, default_value = "ref")]
    pub backend: crate::backend::BackendKind,
    /// Device of the `tch` backend: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: crate::Device,
    /// Precision of the `tch` backend for float32 work: fp32 (TF32 off), fp16 or bf16 (judged
    /// on the half-precision twins against MMSegmentation's own half-precision error; other
    /// cases are skipped). float64 cases run in float64 with fp32.
    #[arg(long, value_enum, default_value = "fp32")]
    pub precision: crate::float::Precision,
}

impl BackendArgs {
    /// The backend these arguments select.
    pub fn spec(&self) -> crate::backend::BackendSpec {
        crate::backend::BackendSpec { kind: self.backend, device: self.device, precision: self.precision }
    }
}

/// Writes a report the user asked for by name (`verify --json/--junit`, `bench --json`)
/// through [`crate::files::write_output`]: atomically, never over a non-regular file or one of
/// the command's `inputs`, over an existing file only with `force`. The error names the file.
pub fn write_report(
    path: &std::path::Path,
    text: &str,
    force: bool,
    inputs: &[&std::path::Path],
) -> anyhow::Result<()> {
    crate::files::write_output_bytes(path, force, inputs, text.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

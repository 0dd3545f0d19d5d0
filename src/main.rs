//! mqtt-provision: see the library's documentation; this file only maps the run to an exit code.

/// mimalloc instead of glibc's malloc: at full speed a fifth of the worker's CPU went to
/// glibc's malloc and free (perf, ceiling benchmark); the pipeline allocates per call (request,
/// headers, JSON) from two threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(mqtt_provision::run::main_entry());
}

//! mqtt-provision: see the library's documentation; this file only maps the run to an exit code.

fn main() {
    std::process::exit(mqtt_provision::run::main_entry());
}

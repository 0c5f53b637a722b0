//! Load generator for chat-server (scenarios: fanout, idle, ramp).
fn main() {
    eprintln!("chat-bench: not built yet");
    std::process::exit(2);
}

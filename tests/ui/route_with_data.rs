use crewflow::prelude::*;

#[derive(Route)]
enum Quality {
    Pass(String),
    Retry { reason: String },
    Fail,
}

#[derive(Route)]
struct NotAnEnum;

fn main() {}

use crewflow::agents::tool;

/// Returns something a model cannot read.
#[tool]
async fn opaque(q: String) -> std::time::Instant {
    let _ = q;
    std::time::Instant::now()
}

fn main() {}

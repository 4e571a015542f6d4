use crewflow::agents::tool;

/// Not async.
#[tool]
fn not_async(q: String) -> String {
    q
}

#[tool]
async fn undocumented(q: String) -> String {
    q
}

/// Generic.
#[tool]
async fn generic<T: ToString>(q: T) -> String {
    q.to_string()
}

/// Borrows.
#[tool]
async fn borrowed(q: &str) -> String {
    q.to_string()
}

/// Destructures.
#[tool]
async fn destructured((a, b): (i64, i64)) -> String {
    format!("{a}{b}")
}

/// Bad name.
#[tool(name = "has space")]
async fn bad_name(q: String) -> String {
    q
}

/// Unknown option.
#[tool(timeout = 5)]
async fn unknown_option(q: String) -> String {
    q
}

struct Svc;

impl Svc {
    /// A method.
    #[tool]
    async fn method(&self, q: String) -> String {
        q
    }
}

fn main() {}

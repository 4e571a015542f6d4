use crewflow::prelude::*;

#[derive(Route, Clone, Copy)]
enum Lane {
    Security,
}

struct Counting;

#[flow]
impl Counting {
    #[start]
    async fn count(&self) -> Result<u32> {
        Ok(3)
    }

    #[listen(count)]
    async fn shout(&self, text: Vec<String>) -> Result<usize> {
        Ok(text.len())
    }

    #[router(count)]
    async fn classify(&self) -> Result<Lane> {
        Ok(Lane::Security)
    }

    #[listen(Lane::Security)]
    async fn escalate(&self, lane: u32) -> Result<u32> {
        Ok(lane)
    }
}

fn main() {}

use crewflow::prelude::*;

struct Sync;

#[flow]
impl Sync {
    #[start]
    fn begin(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}

use crewflow::prelude::*;

struct Looping;

#[flow]
impl Looping {
    #[start]
    async fn begin(&self) -> Result<()> {
        Ok(())
    }

    #[listen(or(begin, again))]
    async fn again(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}

use crewflow::prelude::*;

struct Pipeline;

#[flow]
impl Pipeline {
    #[start]
    async fn research(&self) -> Result<()> {
        Ok(())
    }

    #[listen(reserch)]
    async fn write(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}

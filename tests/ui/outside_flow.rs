use crewflow::prelude::*;

struct Plain;

impl Plain {
    #[listen(begin)]
    async fn next(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}

use crewflow::prelude::*;

struct Mixed;

#[flow]
impl Mixed {
    #[start]
    async fn begin(&self) -> Result<()> {
        Ok(())
    }

    // `#[blocking]` and `#[persist]` mark steps; a plain method has no step to mark.
    #[blocking]
    fn helper(&self) -> u32 {
        1
    }
}

impl Plain {
    #[blocking]
    async fn outside(&self) -> Result<()> {
        Ok(())
    }
}

struct Plain;

fn main() {}

use crewflow::prelude::*;

struct Bad;

#[flow]
impl Bad {
    #[start(123)]
    async fn begin(&self) -> Result<()> {
        Ok(())
    }

    #[listen(xor(begin))]
    async fn next(&self) -> Result<()> {
        Ok(())
    }

    // `+` is not a trigger operator: `|` is or, `&` is and.
    #[listen(begin + next)]
    async fn plus(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}

use crewflow::prelude::*;

struct Strings;

#[flow]
impl Strings {
    #[start]
    async fn begin(&self) -> Result<()> {
        Ok(())
    }

    #[router(begin)]
    async fn undeclared(&self) -> Result<String> {
        Ok("left".into())
    }

    #[router(begin, routes = ["left", "right"])]
    async fn half_handled(&self) -> Result<String> {
        Ok("left".into())
    }

    #[listen("left")]
    async fn go_left(&self) -> Result<()> {
        Ok(())
    }

    #[listen("lefft")]
    async fn typo(&self) -> Result<()> {
        Ok(())
    }
}

fn main() {}

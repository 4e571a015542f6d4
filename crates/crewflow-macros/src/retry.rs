//! `#[retry(attempts = N, backoff = expr, max_backoff = expr, when = path)]` on a step: the
//! builder's `.retry(Retry::attempts(N)...)`, spelled in the impl block.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Attribute, Expr, Token};

/// A parsed `#[retry(..)]`.
pub struct RetryAttr {
    attempts: Expr,
    backoff: Option<Expr>,
    max_backoff: Option<Expr>,
    when: Option<Expr>,
}

const USAGE: &str = "#[retry(attempts = 3)] or #[retry(attempts = 3, backoff = Duration::from_millis(200), max_backoff = Duration::from_secs(5), when = Self::is_transient)]";

pub fn is_retry_attr(a: &Attribute) -> bool {
    a.path().segments.last().is_some_and(|s| s.ident == "retry")
}

impl RetryAttr {
    pub fn parse(attr: &Attribute) -> syn::Result<Self> {
        let args = attr
            .parse_args_with(Punctuated::<Expr, Token![,]>::parse_terminated)
            .map_err(|e| syn::Error::new(e.span(), format!("#[retry] takes `key = value` options: {USAGE}")))?;
        let (mut attempts, mut backoff, mut max_backoff, mut when) = (None, None, None, None);
        for arg in args {
            let Expr::Assign(a) = &arg else {
                return Err(syn::Error::new(arg.span(), format!("expected `key = value`: {USAGE}")));
            };
            let key = match &*a.left {
                Expr::Path(p) => p.path.get_ident().map(ToString::to_string),
                _ => None,
            };
            let slot = match key.as_deref() {
                Some("attempts") => &mut attempts,
                Some("backoff") => &mut backoff,
                Some("max_backoff") => &mut max_backoff,
                Some("when") => &mut when,
                _ => {
                    return Err(syn::Error::new(
                        a.left.span(),
                        "unknown #[retry] option; expected attempts, backoff, max_backoff or when",
                    ));
                }
            };
            if slot.replace((*a.right).clone()).is_some() {
                return Err(syn::Error::new(a.left.span(), "this #[retry] option is given twice"));
            }
        }
        let attempts = attempts
            .ok_or_else(|| syn::Error::new(attr.span(), format!("#[retry] needs the number of attempts: {USAGE}")))?;
        Ok(RetryAttr { attempts, backoff, max_backoff, when })
    }

    /// `.retry(Retry::attempts(..)...)` for the step's builder call.
    pub fn build(&self, krate: &TokenStream) -> TokenStream {
        let attempts = &self.attempts;
        let backoff = self.backoff.as_ref().map(|e| quote!(.backoff(#e)));
        let max_backoff = self.max_backoff.as_ref().map(|e| quote!(.max_backoff(#e)));
        let when = self.when.as_ref().map(|e| quote!(.when(#e)));
        quote!(.retry(#krate::Retry::attempts(#attempts) #backoff #max_backoff #when))
    }

    pub fn span(attr: &Attribute) -> Span {
        attr.span()
    }
}

//! Trigger expressions inside step attributes: `research`, `Lane::Security`, `"retry"`,
//! `or(..)`, `and(..)`, and the operators `a | b`, `a & b` (the builder's spelling too), nested
//! freely.

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, Ident, Lit, LitStr, Path};

/// A parsed trigger.
pub enum TriggerAst {
    /// A bare identifier: the completion of the step (method) of that name.
    Step(Ident),
    /// A path with two or more segments: a typed route value, e.g. `Lane::Security`.
    Route {
        path: Path,
        /// The route type: the path without its last segment (`Lane`).
        ty: Path,
    },
    /// A string literal: a label returned by a string router.
    Label(LitStr),
    /// `or(..)`.
    Or(Vec<TriggerAst>),
    /// `and(..)`.
    And(Vec<TriggerAst>),
}

const EXPECTED: &str = "invalid trigger: expected a step name (`research`), a typed route (`Lane::Security`), a string label (\"retry\"), or(..), and(..), `a | b` or `a & b`";

impl TriggerAst {
    pub fn parse(expr: &Expr) -> syn::Result<Self> {
        match expr {
            Expr::Path(p) if p.qself.is_none() && p.attrs.is_empty() => {
                let path = &p.path;
                if path.segments.iter().any(|s| !s.arguments.is_none()) {
                    return Err(syn::Error::new(path.span(), EXPECTED));
                }
                if path.segments.len() == 1 && path.leading_colon.is_none() {
                    return Ok(TriggerAst::Step(path.segments[0].ident.clone()));
                }
                let mut ty = path.clone();
                ty.segments.pop();
                // `pop` leaves a trailing `::` punct; rebuild without it.
                let ty = Path {
                    leading_colon: ty.leading_colon,
                    segments: ty.segments.into_pairs().map(|p| p.into_value()).collect(),
                };
                Ok(TriggerAst::Route { path: path.clone(), ty })
            }
            Expr::Lit(l) => match &l.lit {
                Lit::Str(s) => Ok(TriggerAst::Label(s.clone())),
                other => Err(syn::Error::new(other.span(), EXPECTED)),
            },
            Expr::Call(call) => {
                let Expr::Path(f) = &*call.func else {
                    return Err(syn::Error::new(call.func.span(), EXPECTED));
                };
                let which = f.path.get_ident().map(Ident::to_string);
                let members = call.args.iter().map(TriggerAst::parse).collect::<syn::Result<Vec<_>>>()?;
                match which.as_deref() {
                    Some("or" | "and") if members.is_empty() => Err(syn::Error::new(
                        call.span(),
                        format!("{}() needs at least one trigger", which.unwrap_or_default()),
                    )),
                    Some("or") => Ok(TriggerAst::Or(members)),
                    Some("and") => Ok(TriggerAst::And(members)),
                    _ => Err(syn::Error::new(f.span(), EXPECTED)),
                }
            }
            Expr::Paren(p) => TriggerAst::parse(&p.expr),
            Expr::Binary(b) => {
                let (left, right) = (TriggerAst::parse(&b.left)?, TriggerAst::parse(&b.right)?);
                match b.op {
                    // Flattened as `Trigger::or` / `Trigger::and` do, so both spell one tree.
                    syn::BinOp::BitOr(_) => Ok(match left {
                        TriggerAst::Or(mut members) => {
                            members.push(right);
                            TriggerAst::Or(members)
                        }
                        left => TriggerAst::Or(vec![left, right]),
                    }),
                    syn::BinOp::BitAnd(_) => Ok(match left {
                        TriggerAst::And(mut members) => {
                            members.push(right);
                            TriggerAst::And(members)
                        }
                        left => TriggerAst::And(vec![left, right]),
                    }),
                    _ => Err(syn::Error::new(b.op.span(), "triggers combine with `|` (or) and `&` (and)")),
                }
            }
            other => Err(syn::Error::new(other.span(), EXPECTED)),
        }
    }

    /// Every leaf, in order.
    pub fn leaves(&self) -> Vec<&TriggerAst> {
        match self {
            TriggerAst::Or(m) | TriggerAst::And(m) => m.iter().flat_map(TriggerAst::leaves).collect(),
            leaf => vec![leaf],
        }
    }

    pub fn span(&self) -> Span {
        match self {
            TriggerAst::Step(i) => i.span(),
            TriggerAst::Route { path, .. } => path.span(),
            TriggerAst::Label(l) => l.span(),
            TriggerAst::Or(m) | TriggerAst::And(m) => m.first().map(TriggerAst::span).unwrap_or_else(Span::call_site),
        }
    }

    /// The expression building this trigger at run time.
    pub fn to_tokens(&self, krate: &TokenStream) -> TokenStream {
        match self {
            TriggerAst::Step(i) => {
                let name = i.to_string();
                quote_spanned!(i.span()=> #krate::trigger::step(#name))
            }
            TriggerAst::Route { path, .. } => quote_spanned!(path.span()=> #krate::trigger::route(#path)),
            TriggerAst::Label(l) => quote!(#krate::trigger::label(#l)),
            TriggerAst::Or(m) | TriggerAst::And(m) => {
                let members = m.iter().map(|t| t.to_tokens(krate));
                let f = if matches!(self, TriggerAst::Or(_)) { quote!(or) } else { quote!(and) };
                quote!(#krate::trigger::#f([#(#members),*]))
            }
        }
    }
}

/// The last identifier of a path, for comparing types syntactically.
pub fn last_ident(path: &Path) -> Option<&Ident> {
    path.segments.last().map(|s| &s.ident)
}

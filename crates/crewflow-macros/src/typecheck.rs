//! The checks `#[flow]` leaves to the type checker: a listener's input type is the output type
//! of what triggers it, and every variant of a typed route is handled. Each becomes generated
//! code whose failure is the compile error (`#[diagnostic::on_unimplemented]`, a `const` panic).

use std::collections::{BTreeMap, BTreeSet};

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{LitStr, Type};

use crate::flow::{StepMethod, accepts_anything};
use crate::trigger::{TriggerAst, last_ident};

/// For every (listener, trigger leaf): a local trait whose only impls accept matching types,
/// and a call that needs it. A mismatch is a compile error at the listener's input, naming
/// both steps and both types.
pub(crate) fn input_checks(steps: &[StepMethod], krate: &TokenStream) -> Vec<TokenStream> {
    let by_name: BTreeMap<String, &StepMethod> = steps.iter().map(|s| (s.ident.to_string(), s)).collect();
    let emitted: BTreeSet<String> = steps
        .iter()
        .filter(|s| s.emits())
        .flat_map(|s| s.feedback.iter().flat_map(|f| f.emit.iter().map(LitStr::value)))
        .collect();
    let mut out = Vec::new();
    for s in steps {
        let (Some(input), Some(t)) = (s.input(), s.role.trigger()) else { continue };
        if accepts_anything(input) {
            continue;
        }
        for (n, leaf) in t.leaves().into_iter().enumerate() {
            let (produced, source) = match leaf {
                TriggerAst::Step(i) => match by_name.get(&i.to_string()) {
                    // A reviewed plain step outputs the feedback result.
                    Some(src) if src.feedback.is_some() && src.router.is_none() => {
                        (quote!(#krate::FeedbackResult), format!("step `{i}` (reviewed)"))
                    }
                    Some(src) => {
                        let ret = &src.ret;
                        (quote!(<#ret as #krate::__private::StepReturn>::Ok), format!("step `{i}`"))
                    }
                    None => continue,
                },
                TriggerAst::Route { ty, path } => {
                    (quote!(#ty), format!("route `{}`", quote!(#path).to_string().replace(' ', "")))
                }
                TriggerAst::Label(l) if emitted.contains(&l.value()) => {
                    (quote!(#krate::FeedbackResult), format!("feedback outcome \"{}\"", l.value()))
                }
                TriggerAst::Label(l) => (quote!(::std::string::String), format!("label \"{}\"", l.value())),
                TriggerAst::Or(_) | TriggerAst::And(_) => continue,
            };
            let message = format!(
                "step `{}` takes `{{Self}}` as input, but it is triggered by {source}, whose output is `{{O}}`",
                s.ident
            );
            let label = format!("the output of {source} is `{{O}}`");
            let check = quote::format_ident!("__CrewflowInputOf_{}_{}", s.ident, n);
            let span = input.span();
            // A `&'static str` output feeds a `String` input.
            let string_input = matches!(input, Type::Path(p) if last_ident(&p.path).is_some_and(|i| i == "String"));
            let from_str = string_input.then(|| quote!(impl #check<&'static str> for ::std::string::String {}));
            out.push(quote_spanned! {span=>
                #[allow(non_camel_case_types)]
                #[diagnostic::on_unimplemented(
                    message = #message,
                    label = #label,
                    note = "make the types match, or take `serde_json::Value` to accept any output"
                )]
                trait #check<O> {}
                impl<T> #check<T> for T {}
                #from_str
                fn #check<I: #check<O>, O>() {}
                #check::<#input, #produced>();
            });
        }
    }
    out
}

/// For each typed route a router returns: a constant that fails to compile if one of its
/// variants is neither listened to nor `#[route(terminal)]`.
pub(crate) fn route_checks(steps: &[StepMethod], krate: &TokenStream) -> Vec<TokenStream> {
    let mut routers: BTreeMap<String, &Type> = BTreeMap::new();
    for s in steps.iter().filter(|s| !s.is_string_router()) {
        if let (Some(name), Some(ty)) = (s.route_type(), s.ok_ty.as_ref()) {
            routers.entry(name.to_string()).or_insert(ty);
        }
    }
    routers
        .into_iter()
        .map(|(name, ty)| {
            let handled = steps
                .iter()
                .filter_map(|s| s.role.trigger())
                .flat_map(TriggerAst::leaves)
                .filter_map(|leaf| match leaf {
                    TriggerAst::Route { path, ty } if last_ident(ty).is_some_and(|i| *i == name) => Some(path),
                    _ => None,
                })
                .map(|path| quote!(#path.__crewflow_route_index()));
            quote_spanned! {ty.span()=>
                const _: () = {
                    let handled: &[usize] = &[#(#handled),*];
                    if let ::core::option::Option::Some(i) = #krate::__private::first_unhandled(
                        <#ty as #krate::Route>::LABELS,
                        <#ty>::__CREWFLOW_TERMINAL_MASK,
                        handled,
                    ) {
                        ::core::panic!("{}", <#ty as #krate::Route>::UNHANDLED_MESSAGES[i]);
                    }
                };
            }
        })
        .collect()
}

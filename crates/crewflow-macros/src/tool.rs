//! `#[tool]`: an async fn becomes a tool an agent can call (`crewflow-agents`).

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Pat};

/// The path of `crewflow-agents` as the user can name it: the crate itself, or `crewflow::agents`.
fn agents_path() -> TokenStream {
    use proc_macro_crate::{FoundCrate, crate_name};
    match crate_name("crewflow-agents") {
        // The crate names itself `crewflow_agents` (`extern crate self as ..`): this also works in
        // its doctests, which are other crates.
        Ok(FoundCrate::Itself) => return quote!(::crewflow_agents),
        Ok(FoundCrate::Name(name)) => {
            let ident = syn::Ident::new(&name, Span::call_site());
            return quote!(::#ident);
        }
        Err(_) => {}
    }
    let root = crate::krate();
    quote!(#root::agents)
}

/// `#[tool]` or `#[tool(name = "...")]`.
struct ToolArgs {
    name: Option<String>,
}

fn parse_args(args: TokenStream) -> syn::Result<ToolArgs> {
    let mut out = ToolArgs { name: None };
    if args.is_empty() {
        return Ok(out);
    }
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let value: syn::LitStr = meta.value()?.parse()?;
            let name = value.value();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(syn::Error::new(
                    value.span(),
                    "a tool's name is letters, digits, `_` and `-` (providers reject others)",
                ));
            }
            out.name = Some(name);
            Ok(())
        } else {
            Err(meta.error("#[tool] takes only `name = \"...\"`: `#[tool]` or `#[tool(name = \"search_web\")]`"))
        }
    });
    syn::parse::Parser::parse2(parser, args)?;
    Ok(out)
}

fn camel(name: &str) -> String {
    name.split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_uppercase().chain(c).collect::<String>(),
                None => String::new(),
            }
        })
        .collect()
}

pub fn expand(args: TokenStream, item: TokenStream) -> syn::Result<TokenStream> {
    let args = parse_args(args)?;
    let func: ItemFn = syn::parse2(item).map_err(|e| {
        syn::Error::new(
            e.span(),
            "#[tool] goes on an async fn: `#[tool] async fn search(query: String) -> Result<String, MyError>`",
        )
    })?;
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(sig.fn_token.span(), "#[tool] needs an async fn: write `async fn`"));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "a #[tool] fn cannot be generic: its parameters are its JSON Schema, so they need concrete types",
        ));
    }
    let docs: Vec<String> = func
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(s.value().trim().to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    let description = docs.join("\n").trim().to_string();
    if description.is_empty() {
        return Err(syn::Error::new(
            sig.ident.span(),
            "a #[tool] fn needs a doc comment: it is the description the model reads to decide when to call it (`/// Searches the web for ...`)",
        ));
    }
    let mut fields = Vec::new();
    let mut names = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => {
                return Err(syn::Error::new(
                    r.span(),
                    "a #[tool] fn cannot take `self`: make it a free async fn (capture state in a `ToolFn` closure instead)",
                ));
            }
            FnArg::Typed(pt) => {
                let Pat::Ident(pi) = &*pt.pat else {
                    return Err(syn::Error::new(
                        pt.pat.span(),
                        "a #[tool] parameter must be a plain name (`query: String`): its name is the argument's name in the schema",
                    ));
                };
                if let syn::Type::ImplTrait(_) | syn::Type::Reference(_) = &*pt.ty {
                    return Err(syn::Error::new(
                        pt.ty.span(),
                        "a #[tool] parameter needs an owned, concrete type (`String`, not `&str` or `impl ..`): the model's arguments are deserialized into it",
                    ));
                }
                let ident = syn::Ident::new(&pi.ident.to_string(), pi.ident.span());
                let ty = &pt.ty;
                let attrs = pt.attrs.iter().filter(|a| !a.path().is_ident("doc"));
                fields.push(quote!(#(#attrs)* pub #ident: #ty));
                names.push(ident);
            }
        }
    }
    let fn_name = &sig.ident;
    let fn_str = fn_name.to_string();
    let tool_name = args.name.unwrap_or_else(|| fn_str.trim_start_matches("r#").to_string());
    let struct_name = format_ident!("{}", camel(fn_str.trim_start_matches("r#")), span = fn_name.span());
    let args_name = format_ident!("__{}ToolArgs", struct_name);
    let vis = &func.vis;
    let agents = agents_path();
    let serde_path = format!("{agents}::__private::serde").replace(' ', "");
    let schemars_path = format!("{agents}::__private::schemars").replace(' ', "");
    let struct_doc = format!("The tool `{tool_name}` (made by `#[tool]` from [`{fn_str}`]): {description}");
    Ok(quote! {
        #func

        #[doc = #struct_doc]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #struct_name;

        #[doc(hidden)]
        #[allow(non_camel_case_types, missing_docs)]
        #[derive(#agents::__private::serde::Deserialize, #agents::__private::schemars::JsonSchema)]
        #[serde(crate = #serde_path)]
        #[schemars(crate = #schemars_path)]
        #vis struct #args_name {
            #(#fields,)*
        }

        impl #agents::Tool for #struct_name {
            fn name(&self) -> &str {
                #tool_name
            }
            fn description(&self) -> &str {
                #description
            }
            fn parameters(&self) -> #agents::__private::serde_json::Value {
                #agents::__private::schema_of::<#args_name>()
            }
            fn call(&self, args: #agents::__private::serde_json::Value) -> #agents::ToolFuture<'_> {
                ::std::boxed::Box::pin(async move {
                    let args: #args_name = #agents::__private::parse_args(args)?;
                    #agents::__private::output(#fn_name(#(args.#names),*).await)
                })
            }
        }
    })
}

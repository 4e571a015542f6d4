//! `#[derive(Route)]`: an enum of unit variants whose variants are a router's labels.

use proc_macro2::TokenStream;
use quote::quote;
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr};

struct RouteVariant {
    ident: syn::Ident,
    label: String,
    terminal: bool,
}

pub fn expand(input: DeriveInput, krate: &TokenStream) -> syn::Result<TokenStream> {
    let Data::Enum(data) = &input.data else {
        return Err(syn::Error::new(
            input.ident.span(),
            "#[derive(Route)] works on enums of unit variants, e.g. `enum Lane { Security, Standard }`",
        ));
    };
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(input.generics.span(), "a route enum cannot be generic"));
    }
    if data.variants.is_empty() {
        return Err(syn::Error::new(input.ident.span(), "a route enum needs at least one variant"));
    }
    let mut errors: Option<syn::Error> = None;
    let mut push = |e: syn::Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    let mut variants = Vec::new();
    for v in &data.variants {
        if !matches!(v.fields, Fields::Unit) {
            push(syn::Error::new(
                v.fields.span(),
                format!(
                    "route variant `{}` carries data; route variants must be unit variants (keep data in the flow's state)",
                    v.ident
                ),
            ));
            continue;
        }
        let mut rv = RouteVariant { ident: v.ident.clone(), label: v.ident.to_string(), terminal: false };
        for attr in v.attrs.iter().filter(|a| a.path().is_ident("route")) {
            let parsed = attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("terminal") {
                    rv.terminal = true;
                    Ok(())
                } else if meta.path.is_ident("rename") {
                    let s: LitStr = meta.value()?.parse()?;
                    rv.label = s.value();
                    Ok(())
                } else {
                    Err(meta.error("unknown route option; expected `terminal` or `rename = \"..\"`"))
                }
            });
            if let Err(e) = parsed {
                push(e);
            }
        }
        variants.push(rv);
    }
    let mut seen = std::collections::HashSet::new();
    for v in &variants {
        if !seen.insert(v.label.clone()) {
            push(syn::Error::new(v.ident.span(), format!("two variants use the label `{}`", v.label)));
        }
    }
    if let Some(e) = errors {
        return Err(e);
    }

    let name = &input.ident;
    let type_name = name.to_string();
    let idents: Vec<_> = variants.iter().map(|v| &v.ident).collect();
    let labels: Vec<_> = variants.iter().map(|v| v.label.as_str()).collect();
    let terminal: Vec<_> = variants.iter().filter(|v| v.terminal).map(|v| v.label.as_str()).collect();
    let mask: Vec<_> = variants.iter().map(|v| v.terminal).collect();
    let indexes = 0..variants.len();
    let messages: Vec<String> = variants
        .iter()
        .map(|v| {
            format!(
                "route `{type_name}::{}` is returned by a router of this flow but no step listens to it; add a step with #[listen({type_name}::{})], or mark the variant #[route(terminal)]",
                v.ident, v.ident
            )
        })
        .collect();
    let expected = format!("one of the labels of {type_name}: {}", labels.join(", "));
    let serde = quote!(#krate::__private::serde);

    Ok(quote! {
        impl #krate::Route for #name {
            const TYPE_NAME: &'static str = #type_name;
            const LABELS: ::core::option::Option<&'static [&'static str]> = ::core::option::Option::Some(&[#(#labels),*]);
            const TERMINAL: &'static [&'static str] = &[#(#terminal),*];
            const UNHANDLED_MESSAGES: &'static [&'static str] = &[#(#messages),*];

            fn label(&self) -> ::std::borrow::Cow<'_, str> {
                ::std::borrow::Cow::Borrowed(match self { #(#name::#idents => #labels),* })
            }
        }

        impl #name {
            #[doc(hidden)]
            pub const __CREWFLOW_TERMINAL_MASK: &'static [bool] = &[#(#mask),*];

            #[doc(hidden)]
            pub const fn __crewflow_route_index(&self) -> usize {
                match self { #(#name::#idents => #indexes),* }
            }
        }

        impl #serde::Serialize for #name {
            fn serialize<S: #serde::Serializer>(&self, serializer: S) -> ::core::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(match self { #(#name::#idents => #labels),* })
            }
        }

        impl<'de> #serde::Deserialize<'de> for #name {
            fn deserialize<D: #serde::Deserializer<'de>>(deserializer: D) -> ::core::result::Result<Self, D::Error> {
                let label = <::std::string::String as #serde::Deserialize>::deserialize(deserializer)?;
                match label.as_str() {
                    #(#labels => ::core::result::Result::Ok(#name::#idents),)*
                    other => ::core::result::Result::Err(<D::Error as #serde::de::Error>::invalid_value(
                        #serde::de::Unexpected::Str(other),
                        &#expected,
                    )),
                }
            }
        }
    })
}

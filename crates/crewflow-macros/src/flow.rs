//! `#[flow]`: turns an impl block whose async methods are marked `#[start]`, `#[listen(..)]`
//! and `#[router(..)]` into an `IntoFlow` implementation, checking at compile time what can be
//! checked: step names, labels, routes nobody handles, input types, arity.

use crewflow_rules::{self as rules, GraphRule};
use std::collections::{BTreeMap, BTreeSet};

use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{
    Attribute, Expr, FnArg, GenericArgument, Ident, ImplItem, ImplItemFn, ItemImpl, LitInt, LitStr, PathArguments,
    ReceiverKind, ReturnType, Token, Type,
};

use crate::feedback::FeedbackAttr;
use crate::trigger::{TriggerAst, last_ident};

/// Options of `#[flow(..)]`.
#[derive(Default)]
pub struct FlowArgs {
    state: Option<Type>,
    name: Option<LitStr>,
    max_steps: Option<LitInt>,
    state_version: Option<LitInt>,
    persist: bool,
}

impl FlowArgs {
    pub fn parse(tokens: TokenStream) -> syn::Result<Self> {
        let mut args = FlowArgs::default();
        let parser = syn::meta::parser(|meta| {
            if meta.path.is_ident("state") {
                args.state = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("name") {
                args.name = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("max_steps") {
                args.max_steps = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("state_version") {
                args.state_version = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("persist") {
                args.persist = true;
            } else {
                return Err(meta.error(
                    "unknown #[flow] option; expected `state = Type`, `name = \"..\"`, `max_steps = N`, \
                     `state_version = N` or `persist`",
                ));
            }
            Ok(())
        });
        parser.parse2(tokens)?;
        Ok(args)
    }
}

/// How a step starts.
pub(crate) enum Role {
    Start,
    StartOn(TriggerAst),
    StartWhen(Expr),
    Listen(TriggerAst),
}

impl Role {
    pub(crate) fn trigger(&self) -> Option<&TriggerAst> {
        match self {
            Role::StartOn(t) | Role::Listen(t) => Some(t),
            Role::Start | Role::StartWhen(_) => None,
        }
    }
}

pub(crate) struct RouterAttr {
    routes: Vec<LitStr>,
    terminal: Vec<LitStr>,
    span: Span,
}

pub(crate) enum Param {
    Cx,
    Input(Box<Type>),
}

pub(crate) struct StepMethod {
    pub(crate) ident: Ident,
    /// Marked `#[persist]`: checkpoint after it.
    pub(crate) persisted: bool,
    /// Marked `#[blocking]`: driven on the blocking pool.
    pub(crate) blocking: bool,
    /// `#[retry(..)]`: runs again after a failure.
    pub(crate) retry: Option<crate::retry::RetryAttr>,
    /// Marked `#[human_feedback(..)]`.
    pub(crate) feedback: Option<FeedbackAttr>,
    pub(crate) role: Role,
    pub(crate) router: Option<RouterAttr>,
    pub(crate) params: Vec<Param>,
    pub(crate) ret: Type,
    /// `T` in a return type written `Result<T>` / `Result<T, E>`.
    pub(crate) ok_ty: Option<Type>,
}

impl StepMethod {
    pub(crate) fn input(&self) -> Option<&Type> {
        self.params.iter().find_map(|p| match p {
            Param::Input(t) => Some(&**t),
            Param::Cx => None,
        })
    }

    pub(crate) fn takes_cx(&self) -> bool {
        self.params.iter().any(|p| matches!(p, Param::Cx))
    }

    pub(crate) fn is_start(&self) -> bool {
        !matches!(self.role, Role::Listen(_))
    }

    /// The route type's last identifier, for typed routers (`Lane` in `Result<Lane>`).
    pub(crate) fn route_type(&self) -> Option<&Ident> {
        self.router.as_ref()?;
        match self.ok_ty.as_ref()? {
            Type::Path(p) => last_ident(&p.path),
            _ => None,
        }
    }

    /// A plain step with feedback outcomes: it routes by them.
    pub(crate) fn emits(&self) -> bool {
        self.router.is_none() && self.feedback.as_ref().is_some_and(|f| !f.emit.is_empty())
    }

    pub(crate) fn is_string_router(&self) -> bool {
        self.router.as_ref().is_some_and(|r| !r.routes.is_empty()) || self.route_type().is_some_and(|t| t == "String")
    }
}

/// Collects every error so the user sees them all at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, span: Span, message: impl std::fmt::Display) {
        self.add(syn::Error::new(span, message));
    }

    fn add(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }
}

const STEP_ATTRS: [&str; 3] = ["start", "listen", "router"];

fn is_step_attr(a: &Attribute) -> bool {
    a.path().segments.last().is_some_and(|s| STEP_ATTRS.iter().any(|n| s.ident == n))
}

fn is_blocking_attr(a: &Attribute) -> bool {
    a.path().segments.last().is_some_and(|s| s.ident == "blocking")
}

fn is_persist_attr(a: &Attribute) -> bool {
    a.path().segments.last().is_some_and(|s| s.ident == "persist")
}

fn is_feedback_attr(a: &Attribute) -> bool {
    a.path().segments.last().is_some_and(|s| s.ident == "human_feedback")
}

pub fn expand(args: FlowArgs, mut item: ItemImpl, krate: &TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    if let Some((path, _)) = &item.trait_ {
        errors.push(path.span(), "#[flow] goes on an inherent impl block (`impl MyFlow { .. }`), not a trait impl");
    }
    if !item.generics.params.is_empty() {
        errors.push(
            item.generics.span(),
            "#[flow] does not support generic impl blocks; keep generic parts in fields (for example an `Llm` handle)",
        );
    }

    let mut steps = Vec::new();
    let mut plain_methods = BTreeSet::new();
    let mut unparsed = false;
    for impl_item in &mut item.items {
        let ImplItem::Fn(f) = impl_item else { continue };
        let persist_attr = f.attrs.iter().find(|a| is_persist_attr(a)).cloned();
        f.attrs.retain(|a| !is_persist_attr(a));
        let blocking_attr = f.attrs.iter().find(|a| is_blocking_attr(a)).cloned();
        f.attrs.retain(|a| !is_blocking_attr(a));
        let retry_attr = f.attrs.iter().find(|a| crate::retry::is_retry_attr(a)).cloned();
        f.attrs.retain(|a| !crate::retry::is_retry_attr(a));
        let feedback_attr = f.attrs.iter().find(|a| is_feedback_attr(a)).cloned();
        f.attrs.retain(|a| !is_feedback_attr(a));
        if !f.attrs.iter().any(is_step_attr) {
            if let Some(b) = blocking_attr {
                errors.push(b.span(), format!("#[blocking] goes on a step; `{}` is not one", f.sig.ident));
            }
            if let Some(r) = retry_attr {
                errors.push(
                    crate::retry::RetryAttr::span(&r),
                    format!("#[retry] goes on a step; `{}` is not one", f.sig.ident),
                );
            }
            if let Some(p) = persist_attr {
                errors.push(p.span(), format!("#[persist] goes on a step; `{}` is not one", f.sig.ident));
            }
            if let Some(p) = feedback_attr {
                errors.push(p.span(), format!("#[human_feedback] goes on a step; `{}` is not one", f.sig.ident));
            }
            plain_methods.insert(f.sig.ident.to_string());
            continue;
        }
        let attrs: Vec<Attribute> = f.attrs.iter().filter(|a| is_step_attr(a)).cloned().collect();
        f.attrs.retain(|a| !is_step_attr(a));
        match parse_step(f, &attrs) {
            Ok(mut step) => {
                step.persisted = persist_attr.is_some();
                step.blocking = blocking_attr.is_some();
                match retry_attr.as_ref().map(crate::retry::RetryAttr::parse).transpose() {
                    Ok(retry) => step.retry = retry,
                    Err(e) => errors.add(e),
                }
                match feedback_attr.as_ref().map(FeedbackAttr::parse).transpose() {
                    Ok(feedback) => {
                        if let Some(Err(e)) = feedback.as_ref().map(|fb| fb.check(step.router.is_some())) {
                            errors.add(e);
                        }
                        step.feedback = feedback;
                    }
                    Err(e) => errors.add(e),
                }
                steps.push(step);
            }
            Err(e) => {
                unparsed = true;
                errors.add(e);
            }
        }
    }

    let self_ty = &item.self_ty;
    let flow_name = args.name.as_ref().map(LitStr::value).unwrap_or_else(|| match &**self_ty {
        Type::Path(p) => last_ident(&p.path).map(Ident::to_string).unwrap_or_default(),
        _ => "flow".to_string(),
    });
    let context = CheckContext { flow: &flow_name, impl_span: self_ty.span(), plain_methods: &plain_methods, unparsed };
    check(&steps, &context, &mut errors);

    if let Some(e) = errors.0 {
        let err = e.to_compile_error();
        return quote!(#item #err);
    }
    let generated = generate(&args, &item, &steps, &flow_name, krate);
    quote!(#item #generated)
}

fn parse_step(f: &ImplItemFn, attrs: &[Attribute]) -> syn::Result<StepMethod> {
    let ident = f.sig.ident.clone();
    let mut role: Option<Role> = None;
    let mut router: Option<RouterAttr> = None;
    let mut router_trigger: Option<TriggerAst> = None;
    for attr in attrs {
        let kind = attr.path().segments.last().map(|s| s.ident.to_string()).unwrap_or_default();
        let args: Vec<Expr> = match &attr.meta {
            syn::Meta::Path(_) => Vec::new(),
            _ => attr.parse_args_with(Punctuated::<Expr, Token![,]>::parse_terminated)?.into_iter().collect(),
        };
        match kind.as_str() {
            "start" => {
                if role.is_some() {
                    return Err(syn::Error::new(
                        attr.span(),
                        format!("step `{ident}` has two step attributes; a step is a start or a listener, not both"),
                    ));
                }
                role = Some(match args.as_slice() {
                    [] => Role::Start,
                    [Expr::Assign(a)] if matches!(&*a.left, Expr::Path(p) if p.path.is_ident("when")) => {
                        Role::StartWhen((*a.right).clone())
                    }
                    [t] => Role::StartOn(TriggerAst::parse(t)?),
                    _ => {
                        return Err(syn::Error::new(
                            attr.span(),
                            "#[start] takes nothing, one trigger (#[start(approved)]), or a predicate (#[start(when = Self::ready)])",
                        ));
                    }
                });
            }
            "listen" => {
                if role.is_some() {
                    return Err(syn::Error::new(
                        attr.span(),
                        format!("step `{ident}` has two step attributes; a step is a start or a listener, not both"),
                    ));
                }
                let [t] = args.as_slice() else {
                    return Err(syn::Error::new(
                        attr.span(),
                        "#[listen] takes one trigger: #[listen(step)], #[listen(or(a, b))], #[listen(Route::Label)]",
                    ));
                };
                role = Some(Role::Listen(TriggerAst::parse(t)?));
            }
            "router" => {
                if router.is_some() {
                    return Err(syn::Error::new(attr.span(), format!("step `{ident}` has two #[router] attributes")));
                }
                let mut r = RouterAttr { routes: Vec::new(), terminal: Vec::new(), span: attr.meta.path().span() };
                for arg in &args {
                    match arg {
                        Expr::Assign(a) => {
                            let key = match &*a.left {
                                Expr::Path(p) => p.path.get_ident().map(Ident::to_string),
                                _ => None,
                            };
                            let list = match key.as_deref() {
                                Some("routes") => &mut r.routes,
                                Some("terminal") => &mut r.terminal,
                                _ => {
                                    return Err(syn::Error::new(
                                        a.left.span(),
                                        "unknown router option; expected `routes = [..]` or `terminal = [..]`",
                                    ));
                                }
                            };
                            list.extend(string_list(&a.right)?);
                        }
                        t if router_trigger.is_none() => router_trigger = Some(TriggerAst::parse(t)?),
                        other => return Err(syn::Error::new(other.span(), "a router has one trigger")),
                    }
                }
                router = Some(r);
            }
            _ => unreachable!("filtered by is_step_attr"),
        }
    }
    let role = match (role, router_trigger) {
        (Some(Role::Listen(_)), Some(_)) | (Some(Role::Listen(_)), None) if router.is_some() => {
            return Err(syn::Error::new(
                f.sig.ident.span(),
                format!(
                    "a router is a listener: put the trigger in the router attribute, #[router(trigger)], and drop #[listen] from `{ident}`"
                ),
            ));
        }
        (Some(_), Some(t)) => {
            return Err(syn::Error::new(
                t.span(),
                "a start router takes its trigger in #[start(..)]; write #[start] #[router] (or #[start(label)] #[router])",
            ));
        }
        (Some(role), None) => role,
        (None, Some(t)) => Role::Listen(t),
        (None, None) => {
            return Err(syn::Error::new(
                f.sig.ident.span(),
                format!(
                    "router `{ident}` needs a trigger: #[router(step_name)]; or add #[start] to make it a start router"
                ),
            ));
        }
    };

    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(sig.fn_token.span(), format!("step `{ident}` must be an `async fn`")));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new(sig.generics.span(), format!("step `{ident}` cannot be generic")));
    }
    match sig.receiver() {
        Some(r) if matches!(r.kind, ReceiverKind::Reference(_, _, None)) => {}
        _ => {
            return Err(syn::Error::new(
                sig.ident.span(),
                format!("step `{ident}` must take `&self` first: `async fn {ident}(&self, cx: &Cx<State>, ..)`"),
            ));
        }
    }
    let mut params = Vec::new();
    for arg in sig.inputs.iter().skip(1) {
        let FnArg::Typed(pt) = arg else { continue };
        match &*pt.ty {
            Type::Reference(r) if is_cx(&r.elem) => {
                if params.iter().any(|p| matches!(p, Param::Cx)) {
                    return Err(syn::Error::new(pt.span(), format!("step `{ident}` takes the context twice")));
                }
                params.push(Param::Cx);
            }
            ty if is_cx(ty) => {
                return Err(syn::Error::new(ty.span(), "take the step context by reference: `cx: &Cx<State>`"));
            }
            ty => {
                if params.iter().any(|p| matches!(p, Param::Input(_))) {
                    return Err(syn::Error::new(
                        pt.span(),
                        format!(
                            "step `{ident}` takes two inputs; a step takes at most one: the output of the step or route that triggers it"
                        ),
                    ));
                }
                params.push(Param::Input(Box::new(ty.clone())));
            }
        }
    }
    let ReturnType::Type(_, ret) = &sig.output else {
        return Err(syn::Error::new(
            sig.ident.span(),
            format!("step `{ident}` must return a `Result`, e.g. `-> Result<String>`"),
        ));
    };
    let ok_ty = result_ok_type(ret);
    Ok(StepMethod {
        ident,
        persisted: false,
        blocking: false,
        retry: None,
        feedback: None,
        role,
        router,
        params,
        ret: (**ret).clone(),
        ok_ty,
    })
}

pub(crate) fn string_list(e: &Expr) -> syn::Result<Vec<LitStr>> {
    let Expr::Array(a) = e else {
        return Err(syn::Error::new(e.span(), "expected a list of labels: [\"a\", \"b\"]"));
    };
    a.elems
        .iter()
        .map(|x| match x {
            Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Ok(s.clone()),
            other => Err(syn::Error::new(other.span(), "labels are string literals")),
        })
        .collect()
}

fn is_cx(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if last_ident(&p.path).is_some_and(|i| i == "Cx"))
}

fn result_ok_type(ret: &Type) -> Option<Type> {
    let Type::Path(p) = ret else { return None };
    let seg = p.path.segments.last()?;
    if seg.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &seg.arguments else { return None };
    match args.args.first()? {
        GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    }
}

/// Types that accept any input: `serde_json::Value` (converted) and `()` (ignored).
pub(crate) fn accepts_anything(ty: &Type) -> bool {
    match ty {
        Type::Tuple(t) => t.elems.is_empty(),
        Type::Path(p) => last_ident(&p.path).is_some_and(|i| i == "Value"),
        _ => false,
    }
}

struct CheckContext<'a> {
    flow: &'a str,
    impl_span: Span,
    /// Methods of the impl that are not steps.
    plain_methods: &'a BTreeSet<String>,
    /// Some step failed to parse (its own error says why; do not pile on).
    unparsed: bool,
}

fn check(steps: &[StepMethod], cx: &CheckContext<'_>, errors: &mut Errors) {
    let flow = cx.flow;
    if !cx.unparsed
        && let Err(rule) = rules::check_start(flow, steps.iter().any(StepMethod::is_start))
    {
        errors.push(cx.impl_span, rule.to_string());
    }
    let names: BTreeSet<String> = steps.iter().map(|s| s.ident.to_string()).collect();
    let string_labels: BTreeMap<String, &LitStr> = steps
        .iter()
        .filter(|s| s.is_string_router())
        .flat_map(|s| s.router.iter().flat_map(|r| r.routes.iter()))
        .chain(steps.iter().filter(|s| s.emits()).flat_map(|s| s.feedback.iter().flat_map(|f| f.emit.iter())))
        .map(|l| (l.value(), l))
        .collect();
    let typed_routers: BTreeSet<String> =
        steps.iter().filter(|s| !s.is_string_router()).filter_map(|s| s.route_type().map(Ident::to_string)).collect();

    let mut used_labels = BTreeSet::new();
    for s in steps {
        if let Some(r) = &s.router {
            if s.is_string_router() && r.routes.is_empty() {
                errors.push(
                    r.span,
                    format!(
                        "router `{}` returns String: declare its labels, #[router(.., routes = [\"a\", \"b\"])]",
                        s.ident
                    ),
                );
            }
            if !s.is_string_router() && s.route_type().is_some() && !r.terminal.is_empty() {
                errors.push(
                    r.span,
                    "terminal = [..] is for string routers; mark a typed route's variant #[route(terminal)] instead",
                );
            }
        }
        let Some(t) = s.role.trigger() else { continue };
        for leaf in t.leaves() {
            match leaf {
                TriggerAst::Step(i) => {
                    let name = i.to_string();
                    let listener = s.ident.to_string();
                    if name != listener && cx.plain_methods.contains(&name) {
                        errors.push(i.span(), format!("`{name}` is a method of `{flow}` but not a step; mark it #[start] or #[listen(..)] to trigger on it"));
                        continue;
                    }
                    match rules::check_step_trigger(flow, &listener, &name, names.iter().map(String::as_str)) {
                        Err(rule @ GraphRule::UnknownStep { .. }) if !cx.unparsed => errors.push(i.span(), format!("{rule}; a trigger names a step method of this impl, a typed route (`Route::Variant`) or a string label (\"label\")")),
                        Err(rule @ GraphRule::SelfTrigger { .. }) => errors.push(i.span(), rule.to_string()),
                        _ => {}
                    }
                }
                TriggerAst::Route { path, ty } => {
                    let Some(ty_name) = last_ident(ty).map(Ident::to_string) else { continue };
                    if !typed_routers.contains(&ty_name) {
                        let have = if typed_routers.is_empty() {
                            "no router of this flow returns a typed route".to_string()
                        } else {
                            format!(
                                "routers here return: {}",
                                typed_routers.iter().cloned().collect::<Vec<_>>().join(", ")
                            )
                        };
                        errors.push(path.span(), format!("no router in flow `{flow}` returns `{ty_name}`, so this route can never be taken; {have}"));
                    }
                }
                TriggerAst::Label(l) => {
                    used_labels.insert(l.value());
                    let listener = s.ident.to_string();
                    let labels = string_labels.keys().map(String::as_str);
                    if let Err(rule) = rules::check_label_trigger(
                        flow,
                        &listener,
                        &l.value(),
                        labels,
                        names.iter().map(String::as_str),
                    ) {
                        errors.push(l.span(), format!("{rule}; string labels come from routes = [..] of a string router (for a typed route write its path, e.g. `Lane::Security`)"));
                    }
                }
                TriggerAst::Or(_) | TriggerAst::And(_) => {}
            }
        }
    }
    for s in steps.iter().filter(|s| s.is_string_router()) {
        let Some(r) = &s.router else { continue };
        let terminal: BTreeSet<String> = r.terminal.iter().map(LitStr::value).collect();
        let router = s.ident.to_string();
        let is_handled = |label: &str| used_labels.contains(label);
        let is_terminal = |label: &str| terminal.contains(label);
        let values: Vec<String> = r.routes.iter().map(LitStr::value).collect();
        for rule in rules::unhandled_routes(flow, &router, values.iter().map(String::as_str), is_handled, is_terminal) {
            let GraphRule::UnhandledRoute { label, .. } = &rule else { continue };
            let span = r.routes.iter().find(|l| l.value() == *label).map_or(r.span, LitStr::span);
            errors.push(span, rule.to_string());
        }
        for l in &r.terminal {
            if !r.routes.iter().any(|x| x.value() == l.value()) {
                errors.push(l.span(), format!("terminal label \"{}\" is not one of the router's routes", l.value()));
            }
        }
    }
}

fn generate(
    args: &FlowArgs,
    item: &ItemImpl,
    steps: &[StepMethod],
    flow_name: &str,
    krate: &TokenStream,
) -> TokenStream {
    let self_ty = &item.self_ty;
    let state = args.state.clone().unwrap_or_else(|| syn::parse_quote!(()));
    let adds = steps.iter().map(|s| add_step(s, &state, args.persist, krate));
    let max_steps = args.max_steps.as_ref().map(|n| quote!(let builder = builder.max_steps(#n);));
    let state_version = args.state_version.as_ref().map(|n| quote!(let builder = builder.state_version(#n);));
    let persist = (args.persist || steps.iter().any(|s| s.persisted))
        .then(|| quote!(let builder = builder.default_store(#krate::__private::default_store);));
    let input_checks = crate::typecheck::input_checks(steps, krate);
    let route_checks = crate::typecheck::route_checks(steps, krate);
    let feedbacks = steps.iter().filter_map(|s| s.feedback.as_ref().map(|f| f.build(&s.ident, krate)));

    quote! {
        impl #krate::IntoFlow for #self_ty {
            type State = #state;

            fn into_builder(self) -> #krate::FlowBuilder<#state> {
                #(#feedbacks)*
                let this = #krate::__private::Arc::new(self);
                let builder = #krate::FlowBuilder::<#state>::new(#flow_name);
                #(#adds)*
                #max_steps
                #state_version
                #persist
                builder
            }
        }

        impl #self_ty {
            /// Compile-time checks of the flow's input types (never called).
            #[doc(hidden)]
            #[allow(dead_code, non_snake_case)]
            fn __crewflow_type_checks() {
                #(#input_checks)*
            }
        }

        #(#route_checks)*
    }
}

fn add_step(s: &StepMethod, state: &Type, every_step_persists: bool, krate: &TokenStream) -> TokenStream {
    let ident = &s.ident;
    let name = ident.to_string();
    let cx_pat = if s.takes_cx() { quote!(cx) } else { quote!(_cx) };
    let (input_pat, input_ty) = match s.input() {
        Some(ty) => (quote!(input), quote!(#ty)),
        None => (quote!(_), quote!(())),
    };
    let call_args = s.params.iter().map(|p| match p {
        Param::Cx => quote!(&cx),
        Param::Input(_) => quote!(input),
    });
    let handler = quote! {{
        let this = #krate::__private::Arc::clone(&this);
        move |#cx_pat: #krate::Cx<#state>, #input_pat: #input_ty| {
            let this = #krate::__private::Arc::clone(&this);
            async move { Self::#ident(&this, #(#call_args),*).await.map_err(#krate::__private::step_error) }
        }
    }};
    let trigger = s.role.trigger().map(|t| t.to_tokens(krate));
    let call = match (&s.role, s.router.is_some()) {
        (Role::Start, false) => quote!(builder.start(#name, #handler)),
        (Role::Start, true) => quote!(builder.start_router(#name, #handler)),
        (Role::StartWhen(pred), false) => quote!(builder.start_when(#name, #pred, #handler)),
        (Role::StartWhen(pred), true) => {
            quote_spanned!(pred.span()=> ::core::compile_error!("a start router cannot have a `when` predicate"))
        }
        (Role::StartOn(_), false) => quote!(builder.start_on(#name, #trigger, #handler)),
        (Role::StartOn(_), true) => quote!(builder.start_router_on(#name, #trigger, #handler)),
        (Role::Listen(_), false) => quote!(builder.listen(#name, #trigger, #handler)),
        (Role::Listen(_), true) => quote!(builder.router(#name, #trigger, #handler)),
    };
    let modifiers = s.router.as_ref().map(|r| {
        let routes = (!r.routes.is_empty()).then(|| {
            let l = &r.routes;
            quote!(.routes([#(#l),*]))
        });
        let terminal = (!r.terminal.is_empty()).then(|| {
            let l = &r.terminal;
            quote!(.terminal([#(#l),*]))
        });
        quote!(#routes #terminal)
    });
    // `#[flow(persist)]` and `#[persist]` add up: with the flow's flag every step checkpoints, so a
    // step's mark must not narrow checkpoints to the marked steps (the builder's `persisted`).
    let persisted = (s.persisted && !every_step_persists).then(|| quote!(.persisted()));
    let blocking = s.blocking.then(|| quote!(.blocking()));
    let retry = s.retry.as_ref().map(|r| r.build(krate));
    let feedback = s.feedback.as_ref().map(|_| {
        let var = FeedbackAttr::var(&s.ident);
        quote!(.human_feedback(#var))
    });
    // `file!()`, `line!()` and `column!()` spanned at the method's name expand to where the
    // method is written, not to the `#[flow]` attribute.
    let at = quote_spanned!(ident.span()=> .defined_at(::core::file!(), ::core::line!(), ::core::column!()));
    quote!(let builder = #call #at #modifiers #persisted #blocking #retry #feedback;)
}

// The guidance UI's stylesheet. Adopted as a constructed stylesheet (document.adoptedStyleSheets,
// and the shadow root of an anchor inside one), so it works under a CSP of `style-src 'self'`:
// no <style> element, no style attribute. Positions are set through the CSSOM (element.style.left),
// which CSP does not restrict.
//
// Theming: every colour and size is a custom property with a default (`--pf-bg`, `--pf-fg`,
// `--pf-accent`, `--pf-focus`, `--pf-border`, `--pf-radius`, `--pf-font`, `--pf-shadow`,
// `--pf-max-width`, `--pf-z`); set them on :root or on `.pf-guidance` in the app's own CSS.
// Classes: `.pf-guidance`, `.pf-tooltip`, `.pf-banner`, `.pf-modal`, `.pf-link-item`,
// `.pf-title`, `.pf-body`, `.pf-actions`, `.pf-close`, `.pf-arrow`, `.pf-theme-{light,dark,auto}`.
export const CSS = `
.pf-guidance{--pf-d-bg:#fff;--pf-d-fg:#111827;--pf-d-muted:#374151;--pf-d-accent:#1d4ed8;--pf-d-focus:#1d4ed8;
--pf-d-border:#6b7280;box-sizing:border-box;max-width:var(--pf-max-width,min(340px,calc(100vw - 16px)));
padding:12px 40px 12px 14px;border:1px solid var(--pf-border,var(--pf-d-border));border-radius:var(--pf-radius,8px);
background:var(--pf-bg,var(--pf-d-bg));color:var(--pf-fg,var(--pf-d-fg));font:var(--pf-font,14px/1.45 system-ui,sans-serif);
box-shadow:var(--pf-shadow,0 6px 24px rgba(0,0,0,.22));z-index:var(--pf-z,2147483000);text-align:start}
.pf-guidance[popover]{inset:auto;margin:0;overflow:visible}
.pf-theme-dark{--pf-d-bg:#1f2937;--pf-d-fg:#f9fafb;--pf-d-muted:#e5e7eb;--pf-d-accent:#93c5fd;--pf-d-focus:#fbbf24;--pf-d-border:#9ca3af}
@media (prefers-color-scheme:dark){.pf-theme-auto{--pf-d-bg:#1f2937;--pf-d-fg:#f9fafb;--pf-d-muted:#e5e7eb;
--pf-d-accent:#93c5fd;--pf-d-focus:#fbbf24;--pf-d-border:#9ca3af}}
.pf-tooltip{position:fixed;top:0;left:0;width:max-content}
.pf-banner,.pf-link-item{position:relative}
.pf-title{display:block;font-weight:600;margin:0 0 2px;font-size:1em}
.pf-body{color:var(--pf-fg,var(--pf-d-muted))}
.pf-body p{margin:2px 0}.pf-body ul{margin:2px 0;padding-inline-start:18px}
.pf-body a,.pf-link{color:var(--pf-accent,var(--pf-d-accent));text-decoration:underline}
.pf-actions{margin-top:6px}
.pf-close{position:absolute;top:6px;inset-inline-end:6px;min-width:28px;min-height:28px;padding:0;border:0;border-radius:4px;
background:transparent;color:inherit;font:inherit;font-size:18px;line-height:1;cursor:pointer}
.pf-guidance :focus-visible,.pf-guidance:focus-visible{outline:3px solid var(--pf-focus,var(--pf-d-focus));outline-offset:2px}
.pf-arrow{position:absolute;width:10px;height:10px;background:inherit;border:inherit;transform:rotate(45deg);pointer-events:none}
.pf-side-bottom>.pf-arrow{top:-6px;border-right-color:transparent;border-bottom-color:transparent}
.pf-side-top>.pf-arrow{bottom:-6px;border-left-color:transparent;border-top-color:transparent}
.pf-side-right>.pf-arrow{left:-6px;border-right-color:transparent;border-top-color:transparent}
.pf-side-left>.pf-arrow{right:-6px;border-left-color:transparent;border-bottom-color:transparent}
.pf-region{position:fixed;top:var(--pf-region-top,8px);inset-inline:0;margin:0 auto;width:min(640px,calc(100vw - 16px));
z-index:var(--pf-z,2147483000);background:transparent;border:0;padding:0;overflow:visible;pointer-events:none}
.pf-region[popover]{inset:auto;inset-inline:0;top:var(--pf-region-top,8px);margin:0 auto}
.pf-region.pf-region-bottom{top:auto;bottom:8px}
.pf-region>.pf-guidance{pointer-events:auto;max-width:none}
.pf-region-inline{position:static;width:auto;margin:8px 0}
.pf-modal{max-width:min(480px,calc(100vw - 32px));padding:20px 44px 20px 20px}
.pf-modal::backdrop{background:rgba(17,24,39,.55)}
.pf-modal .pf-title{font-size:1.15em}
@media (prefers-reduced-motion:no-preference){.pf-guidance{animation:pf-in .16s ease-out}}
@keyframes pf-in{from{opacity:0}to{opacity:1}}
`;

let sheet = null;

/** Adopt the stylesheet into a document or shadow root (once per root). */
export function adopt(root) {
  try {
    if (!sheet) {
      sheet = new CSSStyleSheet();
      sheet.replaceSync(CSS);
    }
    const list = root.adoptedStyleSheets;
    if (list && list.indexOf(sheet) < 0) root.adoptedStyleSheets = [...list, sheet];
    return true;
  } catch (e) {
    return false; // a browser without constructed stylesheets: the UI is unstyled but usable
  }
}

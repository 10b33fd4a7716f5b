// The guidance UI's stylesheet. Adopted as a constructed stylesheet (document.adoptedStyleSheets,
// and the shadow root of an anchor inside one), so it works under a CSP of `style-src 'self'`:
// no <style> element, no style attribute. Positions are set through the CSSOM (element.style.left),
// which CSP does not restrict.
//
// Theming: every colour and size is a custom property with a default (`--pf-bg`, `--pf-fg`,
// `--pf-accent`, `--pf-focus`, `--pf-border`, `--pf-radius`, `--pf-font`, `--pf-shadow`,
// `--pf-max-width`, `--pf-z`); set them on :root or on `.pf-guidance` in the app's own CSS.
// Classes: `.pf-guidance`, `.pf-tooltip`, `.pf-banner`, `.pf-modal`, `.pf-link-item`,
// `.pf-title`, `.pf-body`, `.pf-actions`, `.pf-close`, `.pf-arrow`, `.pf-side-{top,bottom,left,right}`,
// `.pf-light` / `.pf-dark` (data-theme="light" or "dark"; else the user's prefers-color-scheme).
// `--pf-b`, `--pf-f`, `--pf-a`, `--pf-o`, `--pf-e` hold the light and dark themes' defaults.
export const CSS = `.pf-guidance{--pf-b:#fff;--pf-f:#111827;--pf-a:#1d4ed8;--pf-o:#1d4ed8;--pf-e:#6b7280;box-sizing:border-box;
max-width:var(--pf-max-width,min(340px,100vw - 16px));padding:12px 40px 12px 14px;border:1px solid var(--pf-border,var(--pf-e));
border-radius:var(--pf-radius,8px);background:var(--pf-bg,var(--pf-b));color:var(--pf-fg,var(--pf-f));
font:var(--pf-font,14px/1.45 system-ui,sans-serif);box-shadow:var(--pf-shadow,0 6px 24px #0004);z-index:var(--pf-z,2147483000);text-align:start}
.pf-dark{--pf-b:#1f2937;--pf-f:#f9fafb;--pf-a:#93c5fd;--pf-o:#fbbf24;--pf-e:#9ca3af}
.pf-guidance[popover]{inset:auto;margin:0;overflow:visible}
.pf-tooltip{position:fixed;top:0;left:0;width:max-content}
.pf-banner,.pf-link-item{position:relative}
.pf-title{display:block;margin-bottom:2px}
.pf-body :is(p,ul){margin:2px 0}
.pf-body a,.pf-link{color:var(--pf-accent,var(--pf-a));text-decoration:underline}
.pf-close{position:absolute;top:6px;inset-inline-end:6px;min-width:28px;min-height:28px;padding:0;border:0;background:none;
color:inherit;font:18px/1 sans-serif;cursor:pointer}
.pf-guidance :focus-visible,.pf-guidance:focus-visible{outline:3px solid var(--pf-focus,var(--pf-o));outline-offset:2px}
.pf-arrow{position:absolute;width:10px;height:10px;background:inherit;border:inherit;transform:rotate(45deg);pointer-events:none}
.pf-side-bottom>.pf-arrow{top:-6px;border-width:1px 0 0 1px}
.pf-side-top>.pf-arrow{bottom:-6px;border-width:0 1px 1px 0}
.pf-side-right>.pf-arrow{left:-6px;border-width:0 0 1px 1px}
.pf-side-left>.pf-arrow{right:-6px;border-width:1px 1px 0 0}
.pf-region{position:fixed;inset:var(--pf-top,8px) 0 auto;margin:0 auto;width:min(640px,100vw - 16px);z-index:var(--pf-z,2147483000);
background:none;border:0;padding:0;overflow:visible;pointer-events:none}
.pf-region-bottom{inset:auto 0 8px}
.pf-region>.pf-guidance{pointer-events:auto;max-width:none}
.pf-region-inline{position:static;width:auto;margin:8px 0}
.pf-modal{max-width:min(480px,100vw - 32px);padding:20px 44px 20px 20px}
.pf-modal::backdrop{background:#1118278c}
@media (prefers-reduced-motion:no-preference){.pf-guidance{animation:pf-in .16s ease-out}}
@keyframes pf-in{from{opacity:0}}`;

let sheet;

/** Adopt the stylesheet into a document or shadow root (once per root). */
export function adopt(root) {
  try {
    if (!sheet) (sheet = new CSSStyleSheet()).replaceSync(CSS);
    const list = root.adoptedStyleSheets;
    if (list.indexOf(sheet) < 0) root.adoptedStyleSheets = [...list, sheet];
  } catch (e) {
    // a browser without constructed stylesheets: the UI is unstyled but usable
  }
}

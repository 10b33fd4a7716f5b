// The UI's own words (the guidance text itself comes localised from the catalog, by the user's
// locale trait). The locale is the backend's (data-locale) or else navigator.language.
const WORDS = {
  en: { dismiss: "Dismiss", more: "Learn more", help: "Help" },
  de: { dismiss: "Schließen", more: "Mehr erfahren", help: "Hilfe" },
  fr: { dismiss: "Fermer", more: "En savoir plus", help: "Aide" },
  es: { dismiss: "Cerrar", more: "Más información", help: "Ayuda" },
  it: { dismiss: "Chiudi", more: "Scopri di più", help: "Aiuto" },
  nl: { dismiss: "Sluiten", more: "Meer informatie", help: "Hulp" },
  pt: { dismiss: "Fechar", more: "Saiba mais", help: "Ajuda" },
  ar: { dismiss: "إغلاق", more: "اعرف المزيد", help: "مساعدة" },
  he: { dismiss: "סגירה", more: "מידע נוסף", help: "עזרה" },
};
const RTL = ["ar", "he", "fa", "ur"];

/** The words for `locale` (a BCP 47 tag such as "de-AT"); English when unknown. */
export function words(locale) {
  const lang = String(locale || "en").toLowerCase().split(/[-_]/)[0];
  return WORDS[lang] || WORDS.en;
}

/** True when `locale`'s script runs right to left. */
export function isRtl(locale) {
  return RTL.indexOf(String(locale || "").toLowerCase().split(/[-_]/)[0]) >= 0;
}

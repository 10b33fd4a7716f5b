// The UI's own words (the guidance text itself comes localised from the catalog, by the user's
// locale trait). The locale is the backend's (data-locale) or else navigator.language.
// Per language: "dismiss|learn more|help".
const WORDS = {
  en: "Dismiss|Learn more|Help",
  de: "Schließen|Mehr erfahren|Hilfe",
  fr: "Fermer|En savoir plus|Aide",
  es: "Cerrar|Más información|Ayuda",
  it: "Chiudi|Scopri di più|Aiuto",
  nl: "Sluiten|Meer informatie|Hulp",
  pt: "Fechar|Saiba mais|Ajuda",
  ar: "إغلاق|اعرف المزيد|مساعدة",
  he: "סגירה|מידע נוסף|עזרה",
};
const lang = (locale) => String(locale).toLowerCase().split(/[-_]/)[0];

/** The words for `locale` (a BCP 47 tag such as "de-AT"), [dismiss, more, help]; English when unknown. */
export const words = (locale) => (WORDS[lang(locale)] || WORDS.en).split("|");

/** True when `locale`'s script runs right to left. */
export const isRtl = (locale) => /^(ar|he|fa|ur)$/.test(lang(locale));

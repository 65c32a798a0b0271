//! Plain-text tables for the terminal, as `invoice` and `audit` print them: a header, rows, optionally a rule
//! and footer rows, every column as wide as its widest cell, text left-aligned and numbers right-aligned, two
//! spaces between columns and no trailing blanks.

use std::fmt::Write as _;

/// How a column is aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: padded on the right.
    Left,
    /// Numbers and amounts: padded on the left.
    Right,
}

/// A table being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    columns: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
    footer: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and alignments.
    pub fn new(columns: &[(&str, Align)]) -> Self {
        Self {
            columns: columns.iter().map(|(h, a)| ((*h).to_owned(), *a)).collect(),
            rows: Vec::new(),
            footer: Vec::new(),
        }
    }

    /// Adds a body row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Adds a row below the rule (totals).
    pub fn footer(&mut self, cells: Vec<String>) {
        self.footer.push(cells);
    }

    /// The rendered table; a rule separates the footer rows, when there are any.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.columns.iter().map(|(h, _)| h.chars().count()).collect();
        for row in self.rows.iter().chain(&self.footer) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.columns.iter().map(|(h, _)| h.clone()).collect();
        self.line(&mut out, &headers, &widths);
        for row in &self.rows {
            self.line(&mut out, row, &widths);
        }
        if !self.footer.is_empty() {
            let rule = widths.iter().sum::<usize>() + 2 * widths.len().saturating_sub(1);
            let _ = writeln!(out, "{}", "-".repeat(rule));
            for row in &self.footer {
                self.line(&mut out, row, &widths);
            }
        }
        out
    }

    fn line(&self, out: &mut String, cells: &[String], widths: &[usize]) {
        let mut line = String::new();
        for (i, ((_, align), width)) in self.columns.iter().zip(widths).enumerate() {
            let cell = cells.get(i).map_or("", String::as_str);
            if i > 0 {
                line.push_str("  ");
            }
            let _ = match align {
                Align::Left => write!(line, "{cell:<width$}"),
                Align::Right => write!(line, "{cell:>width$}"),
            };
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_fit_their_widest_cell_with_a_rule_before_the_footer() {
        let mut table = Table::new(&[
            ("model", Align::Left),
            ("requests", Align::Right),
            ("note", Align::Left),
        ]);
        table.row(vec!["gpt-4o-mini".into(), "2".into(), "ok".into()]);
        table.row(vec!["llama-3".into(), "1000".into()]);
        table.footer(vec!["total".into(), "1002".into(), String::new()]);
        let expected = "\
model        requests  note
gpt-4o-mini         2  ok
llama-3          1000
---------------------------
total            1002
";
        assert_eq!(table.render(), expected);
    }

    #[test]
    fn no_footer_no_rule() {
        let mut table = Table::new(&[("a", Align::Left)]);
        table.row(vec!["x".into()]);
        assert_eq!(table.render(), "a\nx\n");
    }
}
